"""regen.json, the kept items of a generation run, in the file the original Alpaca generator wrote.

    regen = RegenFile(Path("runs/regen") / REGEN_NAME)
    regen.save(items)                        # the whole list, as `jdump(items, path)` writes it, atomically
    items = load_legacy_regen(path)          # a regen.json from the original script, checked item by item

The run's journal (alpaca_lib/generation/journal.py) is what a resumed run reads; regen.json is the
readable copy of its items, rewritten by alpaca_lib/generation/runner.py as the run goes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import atomic_write, disk_full_as_error, jload
from alpaca_lib.data.records import ALPACA_FIELDS, RecordMessages, check_record

REGEN_NAME = "regen.json"

_NEEDS = "{where} needs string 'instruction', 'input' and 'output'; found {%s}. Fix or move the file to start afresh."
_REGEN_ITEM = RecordMessages(not_object=_NEEDS % "type", missing=None, not_string=_NEEDS % "keys")


def load_legacy_regen(path: Path) -> list[dict]:
    """The items of a regen.json that has no journal beside it (one the original script wrote).

    Raises:
        UsageError: the file is not a list of items with string instruction, input and output.
    """
    items = jload(path)
    if not isinstance(items, list):
        raise UsageError(f"{path}: expected a JSON list of generated items; found {type(items).__name__}")
    for i, it in enumerate(items):
        check_record(it, f"{path}: item {i}", ALPACA_FIELDS, messages=_REGEN_ITEM, error=UsageError)
    return items


class RegenFile:
    """regen.json: the kept items, as the original's `jdump(items)` writes them, byte for byte.

    Each save rewrites the file atomically (temporary file, then rename), but each item is encoded
    only once, the first time it is saved: a save costs one write of the file, not an encoding of
    every item kept so far.

    Args:
        path: the file.
    """

    def __init__(self, path: Path):
        self.path = path
        self._encoded: list[str] = []  # items[i] as it appears in the file; items are only ever appended

    def save(self, items: list[dict]) -> None:
        """Writes `items` (the list saved before, with more appended) to the file."""
        encoded = self._encoded
        encoded.extend(_json_indented(it, 1) for it in items[len(encoded) :])
        kept = f"the previous {self.path.name} and the journal beside it, which holds every finished batch, are intact"
        with disk_full_as_error(self.path, kept), atomic_write(self.path) as f:
            if not encoded:
                f.write("[]")
                return
            # What json.dump(items, f, indent=4) writes around the items, piece by piece (the file may be 70 MB).
            f.write("[\n    ")
            f.write(encoded[0])
            for text in encoded[1:]:
                f.write(",\n    ")
                f.write(text)
            f.write("\n]")


def _json_indented(obj: Any, level: int) -> str:
    """`obj` as `jdump` (json.dump with indent=4) writes it nested `level` deep in a document.

    JSON text has no newline but those of its indentation (one in a string is written `\\n`), so
    indenting every line of the encoded object by `level` steps puts it at that depth.
    """
    return json.dumps(obj, indent=4, ensure_ascii=False, default=str).replace("\n", "\n" + "    " * level)
