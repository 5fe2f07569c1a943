"""Holding examples out of a tokenized training set for evaluation.

    python train.py --val_set_size 200 --evaluation_strategy steps --eval_steps 100 ...

The split is taken over the tokenized examples (so the preprocessing cache of the whole file is reused),
with a seeded permutation: the same seed and file always hold out the same records.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from alpaca_lib.core.errors import UsageError
from alpaca_lib.data.tokenizing import EncodedData, loss_tokens


def select_examples(encoded: EncodedData, indices: Sequence[int]) -> EncodedData:
    """A new `EncodedData` holding the given examples, in the given order.

    Args:
        encoded: tokenized examples.
        indices: positions of the examples to keep.
    Returns:
        `EncodedData` with `stats` counting only the selected examples (`examples`, `kept`, `tokens`,
        `loss_tokens`), plus the parent's `cache` state; the loss mask of the selected examples, if it has one.
    """
    indices = np.asarray(indices, dtype=np.int64)
    starts, ends = encoded.offsets[indices], encoded.offsets[indices + 1]
    lengths = ends - starts
    offsets = np.zeros(len(indices) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])

    def gather(per_token: np.ndarray) -> np.ndarray:  # the selected examples' stretches of a per-token array
        if not len(indices):
            return np.zeros(0, dtype=per_token.dtype)
        return np.concatenate([per_token[s:e] for s, e in zip(starts, ends)])

    flat = gather(encoded.input_ids)
    source_lens = encoded.source_lens[indices]
    mask = gather(encoded.loss_mask) if encoded.loss_mask is not None else None
    stats = {
        "examples": len(indices),
        "kept": len(indices),
        "dropped_no_response": 0,
        "dropped_indices": [],
        "boundary_merges": 0,
        "tokens": int(offsets[-1]),
        "loss_tokens": loss_tokens(offsets, source_lens, mask),
        "cache": encoded.stats.get("cache", "off"),
    }
    return EncodedData(flat.astype(encoded.input_ids.dtype, copy=False), offsets, source_lens, stats, mask)


def hold_out(encoded: EncodedData, val_set_size: int, seed: int) -> Tuple[EncodedData, EncodedData]:
    """Splits tokenized examples into (train, eval) with `val_set_size` examples held out at random.

    Args:
        encoded: the tokenized training file.
        val_set_size: number of examples to hold out (1 .. len(encoded) - 1).
        seed: seed of the permutation that picks them.
    Returns:
        (train, eval), each keeping the original order of its examples.
    Raises:
        UsageError: `val_set_size` leaves no training or no evaluation example.
    """
    n = len(encoded)
    if not 0 < val_set_size < n:
        raise UsageError(
            f"--val_set_size {val_set_size}: the training file has {n} usable examples; hold out between 1 and "
            f"{n - 1} of them (or pass --eval_data_path)."
        )
    held = np.sort(np.random.default_rng(seed).permutation(n)[:val_set_size])
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    return select_examples(encoded, np.flatnonzero(mask)), select_examples(encoded, held)
