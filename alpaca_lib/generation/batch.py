"""One batch of a generation run, in its two phases: ask the model (`request_batch`), then keep or drop
each item it gave (`decide_batch`).

    ids = batch_prompt_ids(seed, batch, size, len(seeds), num_prompt_instructions)
    replies = request_batch(client, executor, journal, state, batch, ids, prompts, per_request, seed, on_reply)
    decision = decide_batch(replies, num_prompt_instructions, chat, pool)

Sampling is reproducible: batch b draws its prompts from `random.Random(f"selfinstruct:{seed}:{b}")`, so a
resumed run sends exactly the prompts the uninterrupted run would have. alpaca_lib/generation/runner.py walks
over the batches and commits each to the journal.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from concurrent.futures import as_completed
from dataclasses import dataclass
from typing import Any

from alpaca_lib.core.journal import Journal
from alpaca_lib.core.rouge import RougeLPool
from alpaca_lib.llm.client import GenerationError

from .journal import JournalState
from .postprocess import post_process_gpt3_response, strip_repeated_header

ROUGE_THRESHOLD = 0.7  # the original's "> 0.7 is a near-duplicate"
MOST_SIMILAR_K = 10
REPLY_HEAD_CHARS = 1000  # what the journal keeps of an oversized reply, for a look at what the server sent


def batch_prompt_ids(seed: int, batch: int, size: int, n_seeds: int, num_prompt_instructions: int) -> list[list[int]]:
    """The seed-task indices of each prompt of a batch; a pure function of (seed, batch)."""
    rng = random.Random(f"selfinstruct:{seed}:{batch}")
    return [rng.sample(range(n_seeds), num_prompt_instructions) for _ in range(size)]


def request_seed(seed: int, batch: int, slot: int) -> int:
    """The `seed` sent with a request, so servers that honour it answer the same prompt the same way."""
    digest = hashlib.sha256(f"{seed}:{batch}:{slot}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class BatchDecision:
    """What phase two made of one batch's replies."""

    kept: list[dict]  # items kept, each with its most similar instructions and their mean similarity
    discarded: Counter  # discard counts by reason (DISCARD_REASONS)
    raw_items: int  # items parsed before any filter
    candidates: int  # items that reached the ROUGE-L check


def request_batch(client, executor, journal: Journal, state: JournalState, batch: int, ids: list[list[int]],
                  prompts: list[str], per_request: int, seed: int, on_reply,
                  max_reply_chars: int = 65536) -> dict[int, dict]:
    """Phase one of a batch: gets a reply for every prompt, journaling each as it arrives.

    Replies an interrupted run already saved (`state.pending`) are reused, not asked for again; the rest
    are sent concurrently on `executor`, `per_request` prompts per request. A reply longer than
    `max_reply_chars` (or cut off by the client) is journaled as its first REPLY_HEAD_CHARS characters and
    its size, and comes back with "size" set: decide_batch drops it as oversized.

    Returns:
        {slot: {"text", "finish_reason"} (and "size")} for every prompt of the batch.
    Raises:
        GenerationError: a request that failed for good (its siblings' replies are journaled first).
    """
    size = len(prompts)
    replies = dict(state.pending)
    state.pending, state.pending_size = {}, 0
    missing = [slot for slot in range(size) if slot not in replies]
    groups = [missing[i : i + per_request] for i in range(0, len(missing), per_request)]
    futures = {
        executor.submit(client.complete, [prompts[slot] for slot in slots], request_seed(seed, batch, slots[0])): slots
        for slots in groups
    }
    errors = []
    for fut in as_completed(futures):
        slots = futures[fut]
        try:
            reply = fut.result()
        except GenerationError as e:
            errors.append(e)
            continue
        rec = {
            "t": "request",
            "batch": batch,
            "batch_size": size,
            "slots": slots,
            "seed_ids": [ids[slot] for slot in slots],
            "model": client.model,
            "api_style": client.api_style,
            "max_tokens": reply.max_tokens,
            "attempts": reply.attempts,
            "latency_s": round(reply.latency_s, 3),
            "usage": reply.usage,
            "choices": [_journaled_choice(slot, c, max_reply_chars) for slot, c in zip(slots, reply.choices)],
        }
        journal.append(rec)
        state.requests.append(rec)
        for choice in rec["choices"]:
            replies[choice["slot"]] = {key: v for key, v in choice.items() if key != "slot"}
        on_reply(reply)
    if errors:
        raise errors[0]
    return replies


def _journaled_choice(slot: int, choice: Any, max_reply_chars: int) -> dict[str, Any]:
    """A reply as the journal keeps it: whole, or, if oversized, its first part and its size."""
    size = choice.size if choice.size is not None else len(choice.text) if len(choice.text) > max_reply_chars else None
    if size is None:
        return {"slot": slot, "text": choice.text, "finish_reason": choice.finish_reason}
    return {"slot": slot, "text": choice.text[:REPLY_HEAD_CHARS], "finish_reason": choice.finish_reason, "size": size}


def decide_batch(replies: dict[int, dict], num_prompt_instructions: int, chat: bool, pool: RougeLPool,
                 keep_other_scripts: bool = False) -> BatchDecision:
    """Phase two of a batch: splits the replies into items with the original filters, then keeps those whose
    ROUGE-L against the pool (and the items kept before them in the batch) is at most 0.7.

    `keep_other_scripts` relaxes the filters for instructions in other scripts (post_process_gpt3_response).
    """
    discarded: Counter = Counter()
    candidates: list[dict] = []
    for slot in range(len(replies)):
        r = replies[slot]
        if r.get("size") is not None:
            discarded["oversized"] += 1
            continue
        text = strip_repeated_header(r["text"], num_prompt_instructions) if chat else r["text"]
        candidates += post_process_gpt3_response(num_prompt_instructions,
                                                  {"text": text, "finish_reason": r["finish_reason"]}, discarded,
                                                  keep_other_scripts)
    decisions = pool.filter_batch([c["instruction"] for c in candidates], ROUGE_THRESHOLD, MOST_SIMILAR_K)
    kept = []
    for c, d in zip(candidates, decisions):
        if not d.kept:
            discarded["similar"] += 1
            continue
        c["most_similar_instructions"] = d.most_similar_instructions
        c["avg_similarity_score"] = d.avg_similarity_score
        kept.append(c)
    return BatchDecision(kept, discarded, sum(discarded.values()) + len(kept), len(candidates))
