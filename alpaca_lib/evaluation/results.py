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
from alpaca_lib.evaluation import leaderboard as board_lib
from alpaca_lib.evaluation.report import CHART_NAME, REPORT_NAME, chart_png, report_markdown


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
    the report. Everything is made first, under the board's lock (a board that cannot be read refuses the
    run here, with nothing written); then the files are written, the board last. A full disk is one error
    line; what the files are made from stays where it was (`verdicts_in`: the judge's journal, or the
    annotations file), so the same command writes them once there is room."""
    kept = f"the verdicts are in {verdicts_in}, so the same command writes these files once there is room"
    board_path = Path(leaderboard)
    readable = [r for r in rows if r["preference"] is not None]
    with board_lib.board_lock(board_path):  # read, add this row, write back: no other run in between
        board = board_lib.merged(board_lib.read_board(board_path),
                                 {**summary, "judge_reliable": not summary["judge_warnings"],
                                  "updated": time.strftime("%Y-%m-%d %H:%M")})
        png = chart_png(board, [len(r["output_2"]) for r in readable], [len(r["output_1"]) for r in readable],
                        summary["outputs_sha256"], summary["model"], summary["reference"])
        report = report_markdown(summary, rows, pairing_note)
        with disk_full_as_error(out, kept):
            with atomic_write(out / "summary.json") as f:
                json.dump(summary, f, indent=2)
            if annotations:
                with atomic_write(out / "annotations.json") as f:
                    json.dump(rows, f, indent=2, ensure_ascii=False)
            with atomic_write(out / CHART_NAME, "wb") as f:
                f.write(png)
            with atomic_write(out / REPORT_NAME) as f:
                f.write(report)
            board_lib.write_board(board_path, board)
