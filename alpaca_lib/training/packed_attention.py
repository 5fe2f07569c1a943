"""The attention of packed rows, and which one a run uses: per-example sdpa or a variable-length kernel.

    attention = choose_packed_attention("auto", training_args.device, half_precision=True)  # before the model loads
    previous = use_packed_attention(model, attention)     # packing_mode does this, and restores `previous`

A packed row holds several examples whose position ids restart at 0, and attention must stay inside each.
`choose_packed_attention` (`--packed_attention`) picks how, once per run, and logs the choice with its
reason: on CUDA torch's `varlen_attn`, else flash-attn's `flash_attn_varlen_func`, each used only when
`probe_packed_kernel` finds that it runs and matches per-example sdpa, else sdpa over the block-diagonal
mask; on CPU sdpa once per example. `use_packed_attention` registers the chosen function with transformers'
`AttentionInterface` and switches the model to it. Why the project calls the kernels itself, and what was
measured: docs/packed_attention.md.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from packaging.version import Version
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from alpaca_lib.core.errors import UsageError

logger = logging.getLogger(__name__)


PACKED_SDPA = "packed_sdpa"


def _packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                           position_ids=None, **kwargs):
    """sdpa run per packed example (each a causal block), like flash-attention's variable-length path.

    Query/key/value are [batch, heads, length, head_dim]; a new example starts wherever the position id
    is 0. Right padding (as in padded batches) is harmless: causal attention never looks ahead at it.
    Returns [batch, length, heads, head_dim], as transformers' attention functions do.
    """
    if position_ids is None:
        raise ValueError(f"attn_implementation={PACKED_SDPA!r} needs position_ids (it serves packed batches only).")
    # Models pass unbatched position ids ([1, length]) when they made them up themselves.
    position_ids = position_ids.expand(query.shape[0], -1)
    groups = query.shape[1] // key.shape[1]
    dropout = dropout if module.training else 0.0
    rows = []
    for r in range(query.shape[0]):
        starts = torch.nonzero(position_ids[r] == 0).flatten().tolist() + [query.shape[2]]
        if starts[0] != 0:
            starts.insert(0, 0)
        parts = [
            torch.nn.functional.scaled_dot_product_attention(
                query[r:r + 1, :, s:e], key[r:r + 1, :, s:e], value[r:r + 1, :, s:e], dropout_p=dropout,
                is_causal=True, scale=scaling, enable_gqa=groups > 1,
            )
            for s, e in zip(starts[:-1], starts[1:]) if e > s
        ]
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    # The per-example attention needs no mask; building the square mask would cost what it saves.
    return None


def use_packed_sdpa(model) -> str:
    """Switches `model` to per-example sdpa for packed rows on CPU; returns the previous implementation.

    Why: sdpa over a whole packed row computes (and masks) the full square; per-example calls compute only
    the causal blocks, as flash-attention's variable-length kernels do on GPU (measured in
    docs/packed_attention.md). `packing_mode` reruns its probe after the switch.
    """
    AttentionInterface.register(PACKED_SDPA, _packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, _no_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(PACKED_SDPA)
    return previous


# ----------------------------------------------------------------------------------------------------
# Which attention packed rows run through: chosen once per run, by device, with a probe.

PACKED_ATTENTION_CHOICES = ("auto", "varlen", "flash", "sdpa", "per_example")
KERNELS = ("varlen", "flash")  # torch's varlen_attn, flash-attn's flash_attn_varlen_func; tried in this order
# Names registered with transformers ("flash" in a name would make it load flash-attention kernels itself).
_REGISTERED = {"per_example": PACKED_SDPA, "varlen": "packed_torch_varlen", "flash": "packed_fa_varlen"}


@dataclass(frozen=True)
class PackedAttention:
    """The attention of packed rows: `name` is varlen, flash, sdpa or per_example; `reason` says why."""

    name: str
    reason: str
    forced: bool = False  # named by --packed_attention rather than picked by auto

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def choose_packed_attention(requested: str, device: torch.device, half_precision: bool,
                            probe: Optional[Callable[[str, torch.device], str]] = None) -> PackedAttention:
    """Picks the attention for packed rows on `device` before the model loads, and logs the choice once.

    auto: on CUDA, torch's variable-length kernel if its probe passes, else flash-attn's if installed and its
    probe passes, else sdpa over the block-diagonal mask (also for float32 training, which neither kernel
    takes); on CPU, sdpa per example; on other accelerators, masked sdpa. A named choice is taken as it is,
    or refused here, before minutes go into loading the model, when it cannot run on this device.

    Args:
        requested: --packed_attention, one of PACKED_ATTENTION_CHOICES.
        device: the device training runs on (training_args.device).
        half_precision: training computes in bf16 or fp16 (--bf16/--fp16 or half-precision weights).
        probe: (kernel, device) -> "" when the kernel runs and matches sdpa there, else why not
            (default `probe_packed_kernel`; tests stub it).
    Raises:
        UsageError: an unknown choice, or varlen/flash where they cannot run (no CUDA device, float32
            training, a failed probe); the message says what to pass instead.
    """
    probe = probe or probe_packed_kernel
    if requested not in PACKED_ATTENTION_CHOICES:
        raise UsageError(f"--packed_attention {requested!r} is not one of: {', '.join(PACKED_ATTENTION_CHOICES)}.")
    if requested in ("sdpa", "per_example"):
        choice = PackedAttention(requested, f"--packed_attention {requested}", forced=True)
    elif requested in KERNELS:
        choice = _forced_kernel(requested, device, half_precision, probe)
    elif device.type == "cpu":
        choice = PackedAttention("per_example", "cpu: sdpa once per example")
    elif device.type != "cuda":
        choice = PackedAttention("sdpa", f"{device.type}: no variable-length kernel; sdpa over a block-diagonal mask")
    elif not half_precision:
        choice = PackedAttention("sdpa", "float32 training: the variable-length kernels take bf16/fp16 only")
    else:
        why_not = {}
        for kernel in KERNELS:
            why_not[kernel] = probe(kernel, device)
            if not why_not[kernel]:
                earlier = "".join(f"; {k} not used: {why}" for k, why in why_not.items() if why)
                choice = PackedAttention(kernel, f"{_kernel_version(kernel)}, probe ok{earlier}")
                break
        else:
            choice = PackedAttention("sdpa", "block-diagonal mask; " + "; ".join(
                f"{k} not used: {why}" for k, why in why_not.items()))
    logger.info("packed attention: %s", choice)
    return choice


def _forced_kernel(kernel: str, device: torch.device, half_precision: bool, probe) -> PackedAttention:
    other = "--packed_attention auto picks what runs here (or name sdpa)"
    if device.type != "cuda":
        raise UsageError(f"--packed_attention {kernel} needs a CUDA GPU; this run is on {device.type}. {other}.")
    if not half_precision:
        raise UsageError(f"--packed_attention {kernel} runs in bf16/fp16 only; add --bf16 True (or --fp16 True), "
                         f"or {other}.")
    why = probe(kernel, device)
    if why:
        raise UsageError(f"--packed_attention {kernel} cannot run on this GPU: {why}. {other}.")
    return PackedAttention(kernel, f"{_kernel_version(kernel)}, probe ok, --packed_attention {kernel}", forced=True)


def _kernel_version(kernel: str) -> str:
    if kernel == "flash":
        return f"flash-attn {getattr(importlib.import_module('flash_attn'), '__version__', '?')}"
    v = Version(torch.__version__)
    return f"torch {v.major}.{v.minor}"


def use_packed_attention(model, attention: PackedAttention) -> Optional[str]:
    """Switches `model` to `attention` for packed training; returns the previous implementation to restore.

    The packed attentions stand in for sdpa: a model loaded with another implementation keeps it (None is
    returned), unless the attention was forced, which is then an error.
    """
    previous = model.config._attn_implementation
    if previous != "sdpa":
        if attention.forced:
            raise UsageError(
                f"--packed_attention {attention.name}: {type(model).__name__} runs attn_implementation={previous!r}, "
                "and the packed attentions replace sdpa only. Drop --packed_attention (or pass sdpa)."
            )
        logger.info("packed attention: %s keeps its %s attention", type(model).__name__, previous)
        return None
    if attention.name == "per_example":
        return use_packed_sdpa(model)
    name = _REGISTERED[attention.name]
    AttentionInterface.register(name, _varlen_attention if attention.name == "varlen" else _flash_attention)
    AttentionMaskInterface.register(name, _no_mask)
    model.set_attn_implementation(name)
    return previous


def _varlen_attention(module, query, key, value, attention_mask, **kwargs):
    return _packed_kernel_attention("varlen", module, query, key, value, **kwargs)[0], None


def _flash_attention(module, query, key, value, attention_mask, **kwargs):
    return _packed_kernel_attention("flash", module, query, key, value, **kwargs)[0], None


def _packed_kernel_attention(kernel: str, module, query, key, value, dropout=0.0, scaling=None, position_ids=None,
                             **kwargs) -> Tuple[torch.Tensor, bool]:
    """Causal attention within each packed example through a variable-length kernel, all rows in one call.

    Query/key/value are [batch, heads, length, head_dim]; an example starts wherever the position id is 0
    (and at each row's start), so the padding block the collator appends is an example of its own. Under
    autocast they are cast to its dtype, as sdpa would cast them (rotary embeddings hand query and key
    over in float32 there). float32 without autocast (train.py's start-up probes), and dropout with torch's
    kernel (which has none), go through per-example sdpa instead: the same result, only slower.
    Returns [batch, length, heads, head_dim], as transformers' attention functions do, and whether the
    kernel ran (False: per-example sdpa did).
    """
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        query, key, value = (t.to(dtype) for t in (query, key, value))
    if position_ids is None:
        position_ids = torch.arange(query.shape[2], device=query.device)[None]
    dropout = dropout if module.training else 0.0
    if query.dtype not in (torch.float16, torch.bfloat16) or (dropout and kernel == "varlen"):
        return _packed_sdpa_attention(module, query, key, value, None, dropout, scaling, position_ids)[0], False
    b, h, n, d = query.shape
    bounds, longest = _boundaries(position_ids, b)
    q, k, v = (t.transpose(1, 2).reshape(b * n, t.shape[1], t.shape[3]) for t in (query, key, value))
    out = _run_kernel(kernel, q, k, v, bounds, longest, scaling, dropout)
    return out.reshape(b, n, h, out.shape[-1]), True


_last_boundaries: list = [None, 0, None]  # [position_ids, rows, result]: the layers of a forward share the tensor


def _boundaries(position_ids: torch.Tensor, rows: int) -> Tuple[torch.Tensor, int]:
    """Cumulative example boundaries (int32) over `rows` flattened rows, and the longest example's length.

    Reading the longest length waits for the device once; every layer of a forward gets the same
    position_ids tensor, so it is done once per forward (the tensor is kept, so its identity is not reused).
    """
    if _last_boundaries[0] is not position_ids or _last_boundaries[1] != rows:
        starts = position_ids.expand(rows, -1) == 0
        starts[:, 0] = True
        flat = torch.nonzero(starts.reshape(-1)).flatten()
        bounds = torch.cat([flat, flat.new_tensor([starts.numel()])]).to(torch.int32)
        _last_boundaries[:] = [position_ids, rows, (bounds, int((bounds[1:] - bounds[:-1]).max()))]
    return _last_boundaries[2]


def _run_kernel(kernel: str, q, k, v, bounds, longest: int, scale, dropout: float) -> torch.Tensor:
    """Calls the kernel on [tokens, heads, head_dim] tensors; looked up at each call, so tests can stand in."""
    if kernel == "flash":
        flash_attn = importlib.import_module("flash_attn")
        return flash_attn.flash_attn_varlen_func(q, k, v, bounds, bounds, longest, longest, dropout_p=dropout,
                                                 softmax_scale=scale, causal=True)
    from torch.nn.attention import varlen  # here, not at the top: an older torch has none (`_run_kernel_available`)

    if k.shape[1] != q.shape[1]:  # grouped-query attention: one key/value head per group of query heads
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    # torch 2.13 spells causal window_size=(-1, 0); a varlen_attn without window_size takes is_causal=True.
    causal = {"window_size": (-1, 0)} if "window_size" in _parameters(varlen.varlen_attn) else {"is_causal": True}
    return varlen.varlen_attn(q, k, v, bounds, bounds, longest, longest, scale=scale, **causal)


@functools.lru_cache(maxsize=None)
def _parameters(fn) -> frozenset:
    return frozenset(inspect.signature(fn).parameters)


_PROBE_ROWS = ((37, 200, 5, 270), (300, 100, 112))  # example lengths; the last block of a row may be its padding


def probe_packed_kernel(kernel: str, device: torch.device, rows: Sequence[Sequence[int]] = _PROBE_ROWS,
                        head_dim: int = 128) -> str:
    """"" when `kernel` runs here, forward and backward, and matches per-example sdpa; else why not, in a line.

    Rows laid out as train.py packs them (by default two of 512 tokens), grouped query heads (8 for 4 key/value
    heads), float32 query and key and a bfloat16 value under bf16 autocast, as a LLaMA layer hands them over
    in training; compared with per-example sdpa in float32 on the same bf16-rounded inputs.
    """
    try:
        _run_kernel_available(kernel)
    except ImportError as e:
        return f"{e}"
    gen = torch.Generator().manual_seed(0)
    try:
        positions = torch.stack([torch.cat([torch.arange(n) for n in lengths]) for lengths in rows]).to(device)
        qkv = [torch.randn(len(rows), heads, positions.shape[1], head_dim, generator=gen).to(device, dtype)
               .requires_grad_()
               for heads, dtype in ((8, torch.float32), (4, torch.float32), (4, torch.bfloat16))]
        module = torch.nn.Module()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out, ran = _packed_kernel_attention(kernel, module, *qkv, scaling=head_dim ** -0.5, position_ids=positions)
        if not ran:
            return "the kernel was not called (fell back to per-example sdpa)"
        out.float().square().sum().backward()
        ref_in = [t.detach().to(torch.bfloat16).float().requires_grad_() for t in qkv]
        ref, _ = _packed_sdpa_attention(module.eval(), *ref_in, None, scaling=head_dim ** -0.5, position_ids=positions)
        ref.square().sum().backward()
    except Exception as e:  # a capability probe: any failure means "not here", said in the log line
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    finally:
        _last_boundaries[:] = [None, 0, None]
    pairs = [(out, ref), *((a.grad, r.grad) for a, r in zip(qkv, ref_in))]
    errors = [((a.float() - r).norm() / r.norm()).item() for a, r in pairs]
    if not all(e < 5e-2 for e in errors):  # bf16 against float32: about 1e-3 to 1e-2; a wrong mask, far more (or NaN)
        return f"differs from per-example sdpa: relative errors {', '.join('%.1e' % e for e in errors)}"
    return ""


def _run_kernel_available(kernel: str) -> None:
    """Raises ImportError, saying what to install, when `kernel` is not in this environment."""
    if kernel == "flash":
        try:
            importlib.import_module("flash_attn")
        except Exception as e:
            raise ImportError(f"flash-attn does not import ({type(e).__name__}: {e}); pip install flash-attn") from None
        return
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401  (whether this torch has it is the question)
    except ImportError:
        raise ImportError(f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn") from None
