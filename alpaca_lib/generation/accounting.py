"""Token, cost and discard accounting for a generation run, read back from its journal.

    python -m generate_instruction generate_instruction_following_data --price_table='{"my-model": [0.5, 1.5]}'

Prices come from `alpaca_lib.llm.pricing` (the defaults, merged with the user's `price_table`).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any, Mapping
from urllib.parse import urlparse

from alpaca_lib.llm.config import redact_url, split_base_urls

from .postprocess import DISCARD_REASONS


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


def format_summary(s: Mapping[str, Any], base_url: str | None = None) -> str:
    """A few human-readable lines for the end of a run (`base_url`: the server, to tell a local one)."""
    reasons = ", ".join(f"{k} {v}" for k, v in s["discarded"].items() if v) or "none"
    if s["cost_usd"] is None and is_loopback(base_url):
        cost = f"none (a server on this machine, {redact_url(base_url)})"  # no token or password in a log
    elif s["cost_usd"] is not None:
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


def is_loopback(base_url: str | None) -> bool:
    """Whether `base_url` names this machine (localhost, 127.0.0.0/8, ::1): a local server, which costs nothing.
    Several servers (a --base_url with commas) are local when each one is."""
    if len(urls := split_base_urls(base_url)) > 1:
        return all(map(is_loopback, urls))
    host = urlparse(base_url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
