"""Any data source written out as one JSON list: what `prepare_data.py convert` does.

    from alpaca_lib.data.convert import write_alpaca_json
    counts = write_alpaca_json(open_source("databricks/databricks-dolly-15k", columns="input=context,output=response"),
                               "openalpaca.json", max_words=2000)   # {"records", "written", "dropped_long"}

Alpaca records are written as {"instruction", "input", "output"}; conversations (OpenAI `messages`, ShareGPT
`conversations`) as {"messages": [{"role", "content"}, ...]}, ShareGPT's speakers named by OpenAI's roles
(`alpaca_lib.data.conversations`). The file is laid out as `json.dump(records, f, indent=4, ensure_ascii=False)`
would lay it out (the original's `jdump`, non-ASCII text kept as it is), written a record at a time and
atomically: it appears only once complete.
"""

from __future__ import annotations

import json
import os
from typing import Dict

from alpaca_lib.core.fileio import atomic_write
from alpaca_lib.data.conversations import is_conversation
from alpaca_lib.data.records import ALPACA_FIELDS, DataError
from alpaca_lib.data.sources import DataSource


def word_count(record: dict) -> int:
    """Whitespace-separated words in the instruction, input and output together (a conversation: in all its
    turns, its system turn included)."""
    if is_conversation(record):
        return sum(len(m["content"].split()) for m in record["messages"])
    return sum(len(record.get(k, "").split()) for k in ALPACA_FIELDS)


def write_alpaca_json(source: DataSource, output_path: str | os.PathLike, max_words: int = 0) -> Dict[str, int]:
    """Writes `source`'s records as a JSON list, atomically: Alpaca records with their three fields,
    conversations as {"messages": [...]}.

    The layout is what `json.dump(records, f, indent=4, ensure_ascii=False)` would write.

    Args:
        source: any source (`open_source`), with its column mapping.
        output_path: the `.json` to write; it appears only once complete.
        max_words: leave out records of more than this many words (`word_count`); 0 keeps all.
    Returns:
        {"records": read, "written": written, "dropped_long": left out for their length}.
    """
    read = written = 0
    with atomic_write(output_path) as f:
        f.write("[")
        for batch in source.batches():
            for record in batch:
                read += 1
                if max_words and word_count(record) > max_words:
                    continue
                out = ({"messages": record["messages"]} if is_conversation(record)
                       else {k: record.get(k, "") for k in ALPACA_FIELDS})
                text = json.dumps(out, indent=4, ensure_ascii=False).replace("\n", "\n    ")
                f.write(("," if written else "") + "\n    " + text)
                written += 1
        if not written:
            raise DataError(
                f"{source.describe()}: no record left to write ({read} read, all longer than --max_words {max_words})."
                if read else f"{source.describe()}: holds no records."
            )
        f.write("\n]")
    return {"records": read, "written": written, "dropped_long": read - written}
