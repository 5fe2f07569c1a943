"""The leaderboard: one CSV row per judged model, shared by every run that names the same file.

    python eval_model.py judge ... --leaderboard runs/leaderboard.csv   # the default

A row is identified by the model's name *and* a digest of its outputs (`outputs_sha256`, over the
instructions and the model's outputs of the judged pairs), with the reference's and the judge's names.
`model_source` says where the outputs came from (`alpaca_lib.evaluation.provenance`), and how the model was
prompted when that was not the Alpaca template (`; prompt_template chat`).
Judging or scoring the same outputs again replaces their row; another model that happens to carry a name
already on the board (two `runs/*/final` folders) gets a row of its own, shown with its digest.

A board re-saved by a spreadsheet (a UTF-8 byte order mark, CRLF line ends) reads as it was written; one
that cannot be read row by row (bytes that are not UTF-8, a quote left open, a row with too many or too
few cells, a win rate that is not a number) is refused with the row to fix, never rewritten. Every
read-modify-write of a board holds a lock file beside it (`.NAME.lock`), so runs that finish at the same
time each keep their row.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Iterator, Sequence

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import atomic_write
from alpaca_lib.core.locking import output_lock

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


@contextlib.contextmanager
def board_lock(path: Path) -> Iterator[Path]:
    """Holds the board's lock (`.NAME.lock` beside it), waiting for another run's update to finish."""
    with output_lock(path.parent, "eval_model.py (leaderboard)", name=f".{path.name}.lock", wait=True) as lock:
        yield lock


def _refuse(path: Path, where: str, what: str) -> UsageError:
    return UsageError(f"--leaderboard {path}: {where} {what}; fix or delete that row (or name another "
                      "--leaderboard), then run the command again. The board was left as it is.")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_board(path: Path) -> list[dict]:
    """The board's rows ([] when there is no board yet); columns it lacks read as empty.

    Raises:
        UsageError: a board that cannot be read row by row, naming the row (its line) and what is wrong.
    """
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"--leaderboard {path}: cannot read it ({e.strerror})") from e
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's byte order mark is not part of the first column's name
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise _refuse(path, f"line {line}", f"has bytes that are not UTF-8 ({data[e.start:e.end]!r} at byte "
                      f"{e.start}); save it as UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # CRLF and LF alike
    rows, header, line = [], None, 1
    try:
        for cells in reader:
            where, line = f"row {len(rows) + 1} (line {line})", reader.line_num + 1  # where this row began
            if header is None:
                header = cells
                if "model" not in header or "win_rate" not in header:
                    raise _refuse(path, "its header (line 1)", f"is {header[:5]}; expected the columns {FIELDS[:5]} ...")
                continue
            if not any(c.strip() for c in cells):
                continue  # an empty line, or a row of empty cells a spreadsheet added
            if any("\n" in c or "\r" in c for c in cells):  # never written here (`merged` flattens them)
                raise _refuse(path, where, "has a line break inside a cell (a quote left open takes the rows after it "
                              "into one cell; or a name with a line break in it)")
            if len(cells) != len(header):
                raise _refuse(path, where, f"has {len(cells)} cells under a header of {len(header)}")
            row = dict(zip(header, cells))
            for k in _FLOATS:
                if not _is_number(row.get(k) or "0"):
                    raise _refuse(path, where, f"has {k} {row[k]!r}; expected a number such as 87.5 (no % sign)")
            rows.append({k: row.get(k) or "" for k in FIELDS})
    except csv.Error as e:
        raise _refuse(path, f"row {len(rows) + 1} (line {line})", f"is not CSV ({e}): a quote left open takes "
                      "the rows after it into one cell") from None
    return rows


def merged(board: Sequence[dict], row: dict) -> list[dict]:
    """The board's rows with `row` added (replacing the row with the same key), best win rate first.

    Args:
        row: the summary's values for FIELDS (others are ignored); `outputs_sha256` must be set.
    """
    new = {k: "" if row.get(k) is None else " ".join(str(row[k]).splitlines()) for k in FIELDS}  # one line a row
    for k in _FLOATS:
        new[k] = "" if new[k] == "" else f"{float(new[k]):.4f}" if k == "order_consistency" else f"{float(new[k]):.2f}"
    key = tuple(str(new[k]) for k in _KEY)
    rows = [r for r in board if tuple(r[k] for k in _KEY) != key]
    rows.append({k: str(v) for k, v in new.items()})
    rows.sort(key=lambda r: -float(r["win_rate"] or 0))
    return rows


def write_board(path: Path, rows: Sequence[dict]) -> None:
    """Writes the rows as the board at `path`, atomically (hold `board_lock(path)` from the read on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def record(path: Path, row: dict) -> list[dict]:
    """Adds `row` to the board at `path` (atomically, under the board's lock), replacing the row with the same
    key; returns the board's rows, best win rate first.

    Args:
        row: the summary's values for FIELDS (others are ignored); `outputs_sha256` must be set.
    Raises:
        UsageError: the board cannot be read (`read_board`); it is left as it was.
    """
    with board_lock(path):
        rows = merged(read_board(path), row)
        write_board(path, rows)
    return rows
