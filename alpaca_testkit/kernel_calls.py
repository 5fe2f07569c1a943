"""Counts the attention calls of model forwards that ran a variable-length kernel, for tests and the GPU check.

    with count_kernel_forwards() as counts:            # {"varlen": 0, "flash": 0}
        with packing_mode(model, attention=PackedAttention("varlen", "test", forced=True)):
            model(**batch).loss.backward()
    assert counts["varlen"] == model.config.num_hidden_layers

Inside the block, `alpaca_lib.training.packed_attention`'s kernel call (`_run_kernel`) and the attention functions
it registers with transformers (`_varlen_attention`, `_flash_attention`) are wrapped: a kernel call counts when a
model forward made it, through a registered function, and it returned. The start-up probe (`probe_packed_kernel`)
calls the kernel directly and float32 forwards go through per-example sdpa, so neither is counted. The attention
must be registered inside the block (`use_packed_attention`, which `packing_mode` and train.py call).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List

from alpaca_lib.training import packed_attention

_ATTENTION_FUNCTIONS = ("_varlen_attention", "_flash_attention")


@contextlib.contextmanager
def count_kernel_forwards() -> Iterator[Dict[str, int]]:
    """Yields {kernel: calls}, kept up to date while the block runs; the product's functions are restored after it."""
    counts = dict.fromkeys(packed_attention.KERNELS, 0)
    in_forward: List[str] = []  # the registered attention functions now running (a model forward's layer)
    originals = {name: getattr(packed_attention, name) for name in ("_run_kernel", *_ATTENTION_FUNCTIONS)}

    def run_kernel(kernel, *args, **kwargs):
        out = originals["_run_kernel"](kernel, *args, **kwargs)
        if in_forward:
            counts[kernel] += 1
        return out

    def forward_of(name: str) -> Callable:
        def attention(*args, **kwargs):
            in_forward.append(name)
            try:
                return originals[name](*args, **kwargs)
            finally:
                in_forward.pop()
        return attention

    wrappers = {"_run_kernel": run_kernel, **{name: forward_of(name) for name in _ATTENTION_FUNCTIONS}}
    for name, wrapper in wrappers.items():
        setattr(packed_attention, name, wrapper)
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(packed_attention, name, original)
