"""The generator's journal: what a generation run writes, and how a resumed run reads it back.

    python -m generate_instruction to_alpaca --input_path=OUTPUT_DIR/regen.journal.jsonl

One JSON object per line, written as things happen:

    {"t": "start", ...}    each time the command starts: settings, seed, seed-file and prompt hashes
    {"t": "request", ...}  each HTTP reply: batch, prompt slots, raw texts, finish reasons, usage (a reply
                           over --max_reply_chars: its first part and its "size")
    {"t": "batch", ...}    a finished batch: its kept items, candidate and discard counts
    {"t": "end", ...}      the run's summary

A batch counts only once its "batch" line is complete: killed before that, the next run re-reads the
batch's saved replies (requests already paid for are not sent again), re-asks for the missing ones,
and decides the batch afresh against the same pool. A half-written last line is cut off on resume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from alpaca_lib.core.journal import iter_records

JOURNAL_NAME = "regen.journal.jsonl"


@dataclass
class JournalState:
    """Everything a resumed run needs from the journal.

    items: kept items of finished batches, in the order they were kept.
    next_batch: the index of the next batch to run (an unfinished batch keeps its index).
    pending: {slot: {"text", "finish_reason"}} replies already saved for the unfinished batch ("size" too
        for an oversized one).
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
                    reply = {"text": choice["text"], "finish_reason": choice["finish_reason"]}
                    if "size" in choice:  # an oversized reply, journaled cut short
                        reply["size"] = choice["size"]
                    state.pending.setdefault(int(choice["slot"]), reply)
        elif kind == "batch":
            items = rec.get("items", [])
            state.items.extend(items)
            state.batches.append({k: v for k, v in rec.items() if k != "items"})
            if rec["batch"] >= state.next_batch:
                state.next_batch = rec["batch"] + 1
            if pending_batch is not None and pending_batch < state.next_batch:
                pending_batch, state.pending, state.pending_size = None, {}, 0
    return state
