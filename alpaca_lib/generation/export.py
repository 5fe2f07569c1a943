"""The export of a generation run to Alpaca training data (instruction, input, output only).

    python -m generate_instruction to_alpaca --input_path=runs/regen --output_path=alpaca_data.json

`export_alpaca` reads the run's journal (or its regen.json) and writes the JSON list that train.py's
--data_path takes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import jdump, jload
from alpaca_lib.data.records import ALPACA_FIELDS, RecordMessages, check_record

from .journal import JOURNAL_NAME, read_journal
from .regen import REGEN_NAME

_EXPORT_ITEM = RecordMessages(not_object="{where} is {type}, expected an object", missing=None,
                              not_string="{where} has no string {key!r} (keys {keys}); expected instruction, input, output")


def export_alpaca(input_path: str | Path, output_path: str | Path) -> int:
    """Writes Alpaca training data (instruction, input, output only) from a run's output.

    Args:
        input_path: a regen.json, a regen.journal.jsonl, or the run's output directory (its journal
            is preferred, being always complete).
        output_path: the JSON file to write (atomically), e.g. alpaca_data.json.
    Returns:
        The number of records written.
    """
    src, output_path = Path(input_path).expanduser(), Path(output_path).expanduser()
    if src.is_dir():
        src = src / JOURNAL_NAME if (src / JOURNAL_NAME).exists() else src / REGEN_NAME
    if not src.is_file():
        raise UsageError(
            f"{src} not found; pass --input_path=OUTPUT_DIR (or its regen.json / {JOURNAL_NAME})"
        )
    if src.suffix == ".jsonl":
        items = read_journal(src).items
    else:
        items = jload(src)
        if not isinstance(items, list):
            raise UsageError(f"{src}: expected a JSON list of items; found {type(items).__name__}")
    records = []
    for i, it in enumerate(items):
        check_record(it, f"{src}: item {i}", ALPACA_FIELDS, ["input"], messages=_EXPORT_ITEM, error=UsageError)
        records.append({"instruction": it["instruction"], "input": it.get("input", ""), "output": it["output"]})
    jdump(records, output_path)
    print(f"wrote {len(records)} records to {output_path}", file=sys.stderr)
    return len(records)
