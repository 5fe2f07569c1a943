"""What requests to an LLM cost: a price table (US dollars per million tokens, [prompt, completion]).

    python -m generate_instruction generate_instruction_following_data --price_table='{"my-model": [0.5, 1.5]}'

The defaults are OpenAI list prices when this table was written; they change, so pass `price_table` (a
JSON object, or a path to a JSON file holding one) to override or add models. A model without a price
gets no cost estimate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from alpaca_lib.core.errors import UsageError

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-3.5-turbo-instruct": (1.50, 2.00),
    "davinci-002": (2.00, 2.00),
    "babbage-002": (0.40, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "text-davinci-003": (20.00, 20.00),  # retired; the price the original Alpaca data was made at
}


def load_price_table(spec: str | Mapping | None) -> dict[str, tuple[float, float]]:
    """Merges the user's prices over the defaults.

    Args:
        spec: None, a mapping {model: [prompt, completion]} or {model: {"prompt": x, "completion": y}},
            a JSON string of one, or a path to a JSON file holding one.
    Returns:
        {model: (prompt $/1M, completion $/1M)}.
    """
    table = dict(DEFAULT_PRICES)
    if spec is None or spec == "":
        return table
    where = "--price_table"
    if isinstance(spec, str):
        path = Path(spec).expanduser()
        if not spec.lstrip().startswith("{") and path.is_file():
            where, spec = str(path), path.read_text(encoding="utf-8")
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where}: not a JSON object or a path to one ({e.msg})") from None
    if not isinstance(spec, Mapping):
        raise UsageError(f"{where}: expected {{model: [prompt_price, completion_price]}}; got {type(spec).__name__}")
    for model, price in spec.items():
        if isinstance(price, Mapping) and {"prompt", "completion"} <= set(price):
            price = (price["prompt"], price["completion"])
        if (
            not isinstance(price, (list, tuple))
            or len(price) != 2
            or not all(isinstance(x, (int, float)) and x >= 0 for x in price)
        ):
            raise UsageError(
                f"{where}: price for {model!r} must be [prompt, completion] in USD per 1M tokens; got {price!r}"
            )
        table[str(model)] = (float(price[0]), float(price[1]))
    return table
