"""The files a judge or score run leaves: summary.json, annotations.json, the leaderboard row, the chart, the report.

    write_results(Path("runs/judge/demo"), summary, rows, "runs/leaderboard.csv", verdicts_in=journal_path)
    JudgeResult(summary, rows, output_dir).report_path   # what `eval_model.py judge` and `score` return

alpaca_lib/evaluation/judge.py (`run_judge`) and alpaca_lib/evaluation/score.py (`run_score`) call it once their
numbers are made; the report and the chart are drawn by alpaca_lib/evaluation/report.py, the row is kept by
alpaca_lib/evaluation/leaderboard.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from alpaca_lib.core.fileio import atomic_write, disk_full_as_error
from alpaca_lib.core.locking import output_lock
from alpaca_lib.evaluation import leaderboard as board_lib
from alpaca_lib.evaluation.report import CHART_NAME, REPORT_NAME, draw_chart, write_report


@dataclass
class JudgeResult:
    """What `run_judge` or `run_score` produced: the summary (as in summary.json), the annotation rows, and
    where the files are."""

    summary: dict
    rows: list[dict]
    output_dir: Path

    @property
    def report_path(self) -> Path:
        return self.output_dir / REPORT_NAME


def write_results(out: Path, summary: dict, rows: list[dict], leaderboard: str, verdicts_in: str | Path,
                  pairing_note: str = "", annotations: bool = True) -> None:
    """summary.json, annotations.json (unless `annotations` is False), the leaderboard row, the chart and
    the report. A full disk is one error line; what the files are made from stays where it was
    (`verdicts_in`: the judge's journal, or the annotations file), so the same command writes them once
    there is room."""
    kept = f"the verdicts are in {verdicts_in}, so the same command writes these files once there is room"
    with disk_full_as_error(out, kept):
        with atomic_write(out / "summary.json") as f:
            json.dump(summary, f, indent=2)
        if annotations:
            with atomic_write(out / "annotations.json") as f:
                json.dump(rows, f, indent=2, ensure_ascii=False)
        board_path = Path(leaderboard)
        with output_lock(board_path.parent, "eval_model.py (leaderboard)", name=f".{board_path.name}.lock", wait=True):
            board = board_lib.record(board_path, {**summary, "judge_reliable": not summary["judge_warnings"],
                                                  "updated": time.strftime("%Y-%m-%d %H:%M")})
        readable = [r for r in rows if r["preference"] is not None]
        draw_chart(out / CHART_NAME, board, [len(r["output_2"]) for r in readable],
                   [len(r["output_1"]) for r in readable], summary["outputs_sha256"], summary["model"],
                   summary["reference"])
        write_report(out, summary, rows, pairing_note)
