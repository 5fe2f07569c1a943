"""The leaderboard: one CSV row per judged model, shared by every run that names the same file.

    python eval_model.py judge ... --leaderboard runs/leaderboard.csv   # the default

A row is identified by the model's name *and* a digest of its outputs (`outputs_sha256`, over the
instructions and the model's outputs of the judged pairs), with the reference's and the judge's names.
Judging or scoring the same outputs again replaces their row; another model that happens to carry a name
already on the board (two `runs/*/final` folders) gets a row of its own, shown with its digest.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Sequence

from alpaca_lib.core.fileio import atomic_write

FIELDS = ["model", "outputs_sha256", "reference", "judge_model", "win_rate", "standard_error",
          "length_controlled_winrate", "length_control", "discrete_win_rate", "n_total", "avg_length", "weighting",
          "order_consistency", "judge_reliable", "prompt_version", "model_source", "updated"]
_KEY = ("model", "outputs_sha256", "reference", "judge_model")
_FLOATS = ("win_rate", "standard_error", "length_controlled_winrate", "discrete_win_rate", "order_consistency")


def outputs_digest(rows: Sequence[dict]) -> str:
    """A short digest of the model's side of annotation rows: its outputs and the instructions they answer."""
    h = hashlib.sha256()
    for instruction, output in sorted((r["instruction"], r["output_2"]) for r in rows):
        h.update(json.dumps([instruction, output], ensure_ascii=False).encode())
    return h.hexdigest()[:12]


def display_name(row: dict, rows: Sequence[dict]) -> str:
    """The row's model name, with its digest when another row on the board has the same name."""
    twins = {r["outputs_sha256"] for r in rows if r["model"] == row["model"]}
    return f"{row['model']} [{row['outputs_sha256'][:6]}]" if len(twins) > 1 else row["model"]


def read_board(path: Path) -> list[dict]:
    """The board's rows ([] when there is no board yet); columns it lacks read as empty."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: r.get(k) or "" for k in FIELDS} for r in csv.DictReader(f)]


def record(path: Path, row: dict) -> list[dict]:
    """Adds `row` to the board at `path` (atomically), replacing the row with the same key; returns the
    board's rows, best win rate first.

    Args:
        row: the summary's values for FIELDS (others are ignored); `outputs_sha256` must be set.
    """
    new = {k: "" if row.get(k) is None else row[k] for k in FIELDS}
    for k in _FLOATS:
        new[k] = "" if new[k] == "" else f"{float(new[k]):.4f}" if k == "order_consistency" else f"{float(new[k]):.2f}"
    key = tuple(str(new[k]) for k in _KEY)
    rows = [r for r in read_board(path) if tuple(r[k] for k in _KEY) != key]
    rows.append({k: str(v) for k, v in new.items()})
    rows.sort(key=lambda r: -float(r["win_rate"] or 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows

