"""The loop under make_diff and recover: one float32 operation over two checkpoints, tensor by tensor.

    result = stream(diff, raw, plan, keys, combine, writer, desc="recover")  # combine(d, r) -> (written, recovered)

`stream` loads one tensor of each input, resizes the raw one as planned (`plan.resize_rows`), combines them,
and hands the output to one writer thread that writes and hashes it while the next tensor is computed, so only
a couple of tensors (plus the mapped file pages each `Checkpoint` keeps) are in memory at a time. It also
takes the original's naive check value: the sum of every recovered tensor, in state-dict order.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch

from alpaca_lib.core.progress import progress_bar
from alpaca_lib.weightdiff.plan import RawPlan, is_derived_buffer, resize_rows
from alpaca_lib.weightdiff.weights import Checkpoint, SafetensorsWriter, sha256_tensor


@dataclass
class StreamResult:
    """What one pass over the tensors produced, besides the files its writer wrote."""

    digests: dict[str, str] = field(default_factory=dict)  # key -> SHA-256 of the recovered tensor
    recovered_sum: float = 0.0  # the original's naive check value
    bytes_written: int = 0


def stream(
    target: Checkpoint,
    raw: Checkpoint,
    plan: RawPlan,
    keys: list[str],
    combine: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    writer: SafetensorsWriter | None,
    device: str = "cpu",
    desc: str = "",
    sum_derived_buffers: bool = False,
) -> StreamResult:
    """Runs `combine(target_tensor, raw_tensor) -> (tensor_to_write, recovered)` over `keys` in storage order.

    Both inputs are float32 on `device` and must not be modified (the first may be a view of a
    memory-mapped file). Each recovered tensor is summed in key order (the naive check sums tensor
    sums in state-dict order, as the original did) and hashed. With `sum_derived_buffers` (recover),
    buffers such as rotary inv_freq that old diffs carry enter the sum as `diff + raw` too, as they
    did in the original's state dict.

    Writing and hashing run on one background thread (both release the GIL), so the disk works while
    the next tensor is computed; at most one tensor waits for it, which bounds the extra memory.
    """
    result = StreamResult()
    sums: list[torch.Tensor] = []  # per-tensor sums, in key order (one worker keeps the order)
    wanted = set(keys)
    order = [k for k in target.infos if k in wanted or (sum_derived_buffers and is_derived_buffer(k))]
    nbytes = sum(target.infos[k].numel * 4 for k in keys)

    def emit(key: str, out: torch.Tensor | None, rec: torch.Tensor) -> None:
        sums.append(rec.sum())
        if out is None:  # a derived buffer: summed only
            return
        if writer is not None:
            writer.write(key, out.cpu())
        result.digests[key] = sha256_tensor(rec)

    def submit(*args) -> None:
        nonlocal pending
        if pending is not None:
            pending.result()  # re-raises a write error here, before more work is queued
        pending = pool.submit(emit, *args)

    bar = progress_bar(total=nbytes, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, dynamic_ncols=True)
    pending = None
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="weight-writer") as pool:
            for i, key in enumerate(order):
                if is_derived_buffer(key):
                    # Not a weight; it still entered the original's naive sum (diff + raw buffer).
                    t = target.load(key).to(device=device, dtype=torch.float32)
                    r = raw.load(key) if key in raw.infos else _raw_rope_inv_freq(raw.folder)
                    submit(key, None, t + r.to(device=device, dtype=torch.float32))
                    continue
                t = target.load(key).to(device=device, dtype=torch.float32)
                r = raw.load(key).to(torch.float32)
                if key in plan.row_keys:
                    r = resize_rows(r, plan.vocab_size, plan.num_new_tokens)
                out, rec = combine(t, r.to(device))
                del t, r
                submit(key, out, rec)
                del out, rec
                bar.update(target.infos[key].numel * 4)
                bar.set_postfix_str(f"{i + 1}/{len(order)} tensors", refresh=False)
            if pending is not None:
                pending.result()
    finally:
        bar.close()
        target.close()
        raw.close()
    total = 0  # the original: Python's sum() over 0-d float32 tensors, left to right
    for x in sums:
        total = total + x
    result.recovered_sum = float(total)
    result.bytes_written = nbytes
    return result


def _raw_rope_inv_freq(path: str | os.PathLike) -> torch.Tensor:
    """The rotary inverse frequencies LLaMA models of 2023 stored as a buffer (same formula as then)."""
    # deferred: transformers takes seconds to import, and `weight_diff.py --help` needs none of it
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    params = getattr(config, "rope_parameters", None) or {}
    base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
