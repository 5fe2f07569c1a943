"""Shared helpers: the Alpaca prompt templates and JSON I/O (written atomically).

    >>> from utils import PROMPT_DICT, format_prompt, jload
    >>> format_prompt({"instruction": "Say hi.", "input": ""})

This module is imported by training, generation and weight-diff code alike, so it stays free of
heavy or optional imports (no torch, no openai).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Mapping

from alpaca_lib.fileio import atomic_write  # noqa: F401  (kept importable from here, where users look)

# The two Alpaca prompt templates, byte for byte as released with Stanford Alpaca. Every caller
# (training, inference, the weight-diff smoke test, the tests) formats them from here.
PROMPT_DICT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}


def format_prompt(example: Mapping[str, Any]) -> str:
    """Formats one record with the Alpaca template, choosing the variant as the original did.

    Args:
        example: a mapping with "instruction" and optionally "input".
    Returns:
        The prompt text, ending in "### Response:".
    """
    if example.get("input", "") != "":
        return PROMPT_DICT["prompt_input"].format_map(example)
    return PROMPT_DICT["prompt_no_input"].format_map(example)


def jdump(obj: Any, f: str | os.PathLike | io.IOBase, mode: str = "w", indent: int = 4, default=str) -> None:
    """Dumps `obj` as JSON to a path (atomically) or to an open file.

    Args:
        obj: a JSON-serialisable object; other objects go through `default` (str by default).
        f: a path or an open text file.
        mode: "w" (the default) writes atomically; "a" appends to the file.
        indent: JSON indentation.
    """
    if isinstance(f, (str, os.PathLike)):
        if "a" in mode:
            Path(f).parent.mkdir(parents=True, exist_ok=True)
            with open(f, mode, encoding="utf-8") as fh:
                json.dump(obj, fh, indent=indent, default=default, ensure_ascii=False)
            return
        with atomic_write(f, "w") as fh:
            json.dump(obj, fh, indent=indent, default=default, ensure_ascii=False)
        return
    json.dump(obj, f, indent=indent, default=default, ensure_ascii=False)


def jload(f: str | os.PathLike | io.IOBase, mode: str = "r") -> Any:
    """Loads a JSON document from a path or an open file."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, mode, encoding="utf-8") as fh:
            return json.load(fh)
    return json.load(f)
