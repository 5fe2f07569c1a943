"""Token, cost and discard accounting for a generation run, read back from its journal.

    python -m generate_instruction generate_instruction_following_data --price_table='{"my-model": [0.5, 1.5]}'

Prices are US dollars per million tokens, [prompt, completion]. The defaults are OpenAI list prices
when this table was written; they change, so pass `price_table` (a JSON object, or a path to a JSON
file holding one) to override or add models. A model without a price gets no cost estimate.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from alpaca_lib.errors import UsageError

from .postprocess import DISCARD_REASONS

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
        path = Path(spec)
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


def summarize(requests: list[dict], batches: list[dict], prices: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """Totals over every request and finished batch of a run (all sessions of it).

    Args:
        requests: the journal's "request" records.
        batches: the journal's "batch" records.
        prices: from load_price_table.
    Returns:
        A JSON-ready dict: requests, attempts, retries, prompts, tokens, raw items, candidates, kept,
        kept_ratio, discarded by reason, cost_usd (None when a model has no price), unpriced models.
    """
    tokens = Counter()
    by_model: dict[str, Counter] = {}
    attempts = prompts = 0
    for r in requests:
        usage = r.get("usage") or {}
        c = by_model.setdefault(r.get("model", "?"), Counter())
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            tokens[key] += int(usage.get(key, 0))
            c[key] += int(usage.get(key, 0))
        attempts += int(r.get("attempts", 1))
        prompts += len(r.get("slots", ()))
    discarded = Counter({reason: 0 for reason in DISCARD_REASONS})
    raw_items = candidates = kept = 0
    for b in batches:
        if b.get("imported"):
            continue
        discarded.update(b.get("discarded", {}))
        raw_items += int(b.get("raw_items", 0))
        candidates += int(b.get("candidates", 0))
        kept += int(b.get("kept", 0))
    cost: float | None = 0.0
    unpriced = sorted(m for m in by_model if m not in prices)
    if unpriced:
        cost = None
    else:
        for model, c in by_model.items():
            p_in, p_out = prices[model]
            cost += (c["prompt_tokens"] * p_in + c["completion_tokens"] * p_out) / 1e6
    return {
        "requests": len(requests),
        "attempts": attempts,
        "retries": attempts - len(requests),
        "prompts": prompts,
        "prompt_tokens": tokens["prompt_tokens"],
        "completion_tokens": tokens["completion_tokens"],
        "total_tokens": tokens["total_tokens"],
        "raw_items": raw_items,
        "candidates": candidates,
        "kept": kept,
        "kept_ratio": round(kept / raw_items, 4) if raw_items else 0.0,
        "discarded": dict(discarded),
        "cost_usd": round(cost, 6) if cost is not None else None,
        "unpriced_models": unpriced,
    }


def format_summary(s: Mapping[str, Any]) -> str:
    """A few human-readable lines for the end of a run."""
    reasons = ", ".join(f"{k} {v}" for k, v in s["discarded"].items() if v) or "none"
    if s["cost_usd"] is not None:
        cost = f"${s['cost_usd']:.4f} (estimate from the price table)"
    else:
        cost = f"unknown (no price for {', '.join(s['unpriced_models'])}; pass --price_table)"
    return (
        f"requests: {s['requests']} ({s['retries']} retries), prompts: {s['prompts']}\n"
        f"items parsed: {s['raw_items']}, kept: {s['kept']} ({100 * s['kept_ratio']:.1f}%)\n"
        f"discarded: {reasons}\n"
        f"tokens: {s['prompt_tokens']} prompt + {s['completion_tokens']} completion = {s['total_tokens']}\n"
        f"cost: {cost}"
    )
