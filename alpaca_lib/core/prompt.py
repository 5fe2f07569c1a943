"""The Alpaca prompt templates, byte for byte as Stanford Alpaca released them, and their formatting.

    >>> from alpaca_lib.core.prompt import PROMPT_DICT, format_prompt
    >>> format_prompt({"instruction": "Say hi.", "input": ""})
    >>> request_text({"instruction": "Translate.", "input": "Hallo"})   # "Translate.\n\nHallo"

`utils.py` re-exports both for the original's users. Nothing heavy is imported here.
"""

from __future__ import annotations

from typing import Any, Mapping

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


def request_text(example: Mapping[str, Any]) -> str:
    """The request as one text: the instruction, then the input after a blank line when there is one.

    This is the form AlpacaEval's own data takes (its records have no `input`; an instance's input follows
    its instruction after a blank line) and all its judges see, so model outputs and annotations carry it
    as their `instruction`, and records are paired on it whichever of the two forms a file uses.
    """
    return example["instruction"] + (f"\n\n{example['input']}" if example.get("input") else "")
