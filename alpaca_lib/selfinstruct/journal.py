"""The append-only journal that makes a generation run crash-safe and resumable.

    python -m generate_instruction to_alpaca --input_path=OUTPUT_DIR/regen.journal.jsonl

One JSON object per line, written as things happen:

    {"t": "start", ...}    each time the command starts: settings, seed, seed-file and prompt hashes
    {"t": "request", ...}  each HTTP reply: batch, prompt slots, raw texts, finish reasons, usage
    {"t": "batch", ...}    a finished batch: its kept items, candidate and discard counts
    {"t": "end", ...}      the run's summary

A batch counts only once its "batch" line is complete: killed before that, the next run re-reads the
batch's saved replies (requests already paid for are not sent again), re-asks for the missing ones,
and decides the batch afresh against the same pool. A half-written last line is cut off on resume.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from alpaca_lib.errors import UsageError

JOURNAL_NAME = "regen.journal.jsonl"


@dataclass
class JournalState:
    """Everything a resumed run needs from the journal.

    items: kept items of finished batches, in the order they were kept.
    next_batch: the index of the next batch to run (an unfinished batch keeps its index).
    pending: {slot: {"text", "finish_reason"}} replies already saved for the unfinished batch.
    pending_size: the unfinished batch's number of prompts (0 when none).
    starts: the "start" records, oldest first.
    requests: every "request" record (for token and cost accounting).
    batches: every "batch" record without its items (for counts).
    """

    items: list[dict] = field(default_factory=list)
    next_batch: int = 0
    pending: dict[int, dict] = field(default_factory=dict)
    pending_size: int = 0
    starts: list[dict] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    batches: list[dict] = field(default_factory=list)


def iter_records(path: Path, repair: bool) -> Iterator[tuple[int, dict]]:
    """Yields (line number, record) of a JSON Lines journal; `repair` cuts off a partial last line first."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        # A process killed mid-write leaves a partial last line; it held nothing committed.
        with open(path, "r+b") as f:
            f.truncate(end)
    for lineno, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(
                f"{path}:{lineno}: journal line is not valid JSON ({e.msg}); the file was edited or damaged. "
                "Remove that line (and any after it) to resume from the batches before it."
            ) from None
        if not isinstance(rec, dict) or "t" not in rec:
            raise UsageError(f"{path}:{lineno}: not a journal record (expected an object with a 't' field)")
        yield lineno, rec


def records_of_run(path: Path, run: dict[str, Any], mismatch: str) -> list[dict]:
    """The records of a journal whose "start" records all carry `run` (what identifies the run).

    Args:
        path: the journal (absent: no records).
        run: the identity this run would write in its "start" record.
        mismatch: how the refusal reads: "PATH <mismatch> (what changed). <the rest>", e.g.
            "holds outputs of another run|Run with the same settings ...".
    Raises:
        UsageError: an earlier run with another identity wrote to this journal; the message names each
            setting that changed, with its old and new value.
    """
    if not path.exists():
        return []
    what, fix = mismatch.split("|")
    records = []
    for _, rec in iter_records(path, repair=True):
        if rec["t"] == "start":
            before = rec.get("run", {})
            changed = sorted(k for k in set(before) | set(run) if before.get(k) != run.get(k))
            if changed:
                diff = "; ".join(f"{k} was {before.get(k)!r}, now {run.get(k)!r}" for k in changed)
                raise UsageError(f"{path} {what} ({diff}). {fix}")
        records.append(rec)
    return records


def read_journal(path: str | os.PathLike, repair: bool = False) -> JournalState:
    """Rebuilds the run's state from a journal.

    Args:
        path: the journal file.
        repair: cut off a partial last line (only the run that owns the journal should).
    Returns:
        The JournalState.
    """
    path = Path(path)
    state = JournalState()
    pending_batch = None
    for _, rec in iter_records(path, repair):
        kind = rec["t"]
        if kind == "start":
            state.starts.append(rec)
        elif kind == "request":
            state.requests.append(rec)
            b = rec["batch"]
            if b >= state.next_batch:
                if pending_batch != b:
                    pending_batch, state.pending = b, {}
                state.pending_size = int(rec["batch_size"])
                for choice in rec["choices"]:
                    state.pending.setdefault(int(choice["slot"]), {"text": choice["text"], "finish_reason": choice["finish_reason"]})
        elif kind == "batch":
            items = rec.get("items", [])
            state.items.extend(items)
            state.batches.append({k: v for k, v in rec.items() if k != "items"})
            if rec["batch"] >= state.next_batch:
                state.next_batch = rec["batch"] + 1
            if pending_batch is not None and pending_batch < state.next_batch:
                pending_batch, state.pending, state.pending_size = None, {}, 0
    return state


class Journal:
    """Appends records to the journal; each line goes to the OS in one write.

    Args:
        path: the journal file (created if absent).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict[str, Any], sync: bool = False) -> None:
        """Writes one record as one line; `sync` also forces it to disk (used for batch commits)."""
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        if sync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
