"""An append-only JSON Lines journal: what makes a long run crash-safe and resumable.

    python -m generate_instruction to_alpaca --input_path=OUTPUT_DIR/regen.journal.jsonl

One JSON object per line, each with a "t" field saying what it records ("start", "request", ...), written
as things happen and read back when the same command runs again. The generator, `eval_model.py outputs`
and `eval_model.py judge` keep one each; a "start" record carries the settings that identify the run, so
a rerun with other settings is refused (`records_of_run`). A half-written last line, left by a killed
process, is cut off when the run that owns the journal reads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import disk_full_as_error


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


def records_of_run(path: Path, run: dict[str, Any], what: str, fix: str) -> list[dict]:
    """The records of a journal whose "start" records all carry `run` (what identifies the run).

    Args:
        path: the journal (absent: no records).
        run: the identity this run would write in its "start" record.
        what: how the refusal names the clash: "PATH <what> (the settings that changed). <fix>", e.g.
            "holds outputs of another run".
        fix: what the user can do about it, e.g. "Run with the same settings to continue it ...".
    Raises:
        UsageError: an earlier run with another identity wrote to this journal; the message names each
            setting that changed, with its old and new value.
    """
    if not path.exists():
        return []
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


class Journal:
    """Appends records to the journal; each line goes to the OS in one write.

    A line that cannot be written whole (a full disk) is cut off again, so the journal always ends with a
    complete record, and the error names the journal and says that everything before it is kept.

    Args:
        path: the journal file (created if absent).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def append(self, record: dict[str, Any], sync: bool = False) -> None:
        """Writes one record as one line; `sync` also forces it to disk (used for batch commits).

        Raises:
            DiskFullError: the disk (or the file size limit) is full; the journal is as it was before.
        """
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        end = os.lseek(self._fd, 0, os.SEEK_END)
        kept = f"{self.path} holds every record written before this one, so a rerun resumes from there"
        with disk_full_as_error(self.path, kept, cleanup=lambda: os.ftruncate(self._fd, end)):
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if sync:
                os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
