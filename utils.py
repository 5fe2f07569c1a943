"""Shared helpers of the original Alpaca scripts: the prompt templates and JSON I/O (written atomically).

    >>> from utils import PROMPT_DICT, format_prompt, jload
    >>> format_prompt({"instruction": "Say hi.", "input": ""})

Kept where the original's users import them from; they live in `alpaca_lib.core.prompt` and `alpaca_lib.core.fileio`.
"""

from alpaca_lib.core.fileio import atomic_write, jdump, jload  # noqa: F401
from alpaca_lib.core.prompt import PROMPT_DICT, format_prompt  # noqa: F401
