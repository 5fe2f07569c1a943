"""Padding-free packing: several examples per row, position ids restarting at each example.

    python train.py --packing True --per_device_train_batch_size 1 --model_max_length 512 ...

Rows are filled best-fit decreasing up to `row_tokens` (train.py passes `--model_max_length`), once,
before training; the Trainer's sampler then shuffles whole rows each epoch, so every step sees
`per_device_train_batch_size` nearly full rows: the same work per step, and no padding apart from the few
tokens that even a full row leaves over.

Inside a row, examples are laid end to end by transformers' `DataCollatorWithFlattening`: position ids
restart at 0 for each example, and the first label of each example is -100, so no label is predicted
across a boundary. transformers turns restarting position ids into a block-diagonal causal mask when no
`attention_mask` is passed and no key/value cache is built (`masking_utils.find_packed_sequence_indices`),
for the sdpa, eager and flex_attention implementations alike (flash-attention reads them as boundaries
in a batch of one row only: see "Attention on a GPU" below). So the collator here returns no attention mask, training runs with
`use_cache=False`, and a probe checks, before training, that the loaded model really keeps examples
apart (OPT, for one, builds its mask without the position ids).

Row length and attention, chosen by measurement (2 CPU cores, a 7M-parameter LLaMA, Alpaca-like
examples of 89 tokens on average; speed relative to the original's random padded batches of 4):
sdpa over a packed row computes the whole square of the row and masks it, so its cost per token grows
with the row length: forward+backward ran 1.30x at rows of 384 tokens, 1.25x at 512, 1.20x at 768, and
one row of 1536 fell to 0.6x. Rows are therefore `model_max_length` long (a few hundred tokens; no
example is longer). Even so, in a full training epoch at 512 the masked square was 16% of the step
time and packing ran only 1.10x, behind length-grouped batches (1.31x). On CPU, train.py therefore
switches packed training to `packed_sdpa` below: sdpa called once per example, over its own causal
block only, which is what flash-attention's variable-length kernels do on GPU (below). That epoch then ran 1.38x. Eager attention was no faster
than sdpa. Loss and logits are the same either way (tests/test_packing.py checks both).

The LM head, last: in Alpaca's examples about 70% of the positions are prompt, whose next token is
not in the loss, yet a causal LM projects every position onto the vocabulary. Packed batches therefore
carry transformers' `logits_to_keep` (a boolean mask of the loss-bearing positions) and `shift_labels`,
and the head and the softmax run on those positions only; the loss and its gradients are unchanged.
On the same epoch this took packing from 1.37-1.53x to 1.63-1.87x over several runs
(`bench/bench_train_modes.py`, modes packed_all_logits and packed). The smaller the head's share of the
model (under 2% of a 7B LLaMA's weights, over 20% of SmolLM2-135M's), the smaller the gain in time;
the logits' memory shrinks alike everywhere.

Attention on a GPU (`choose_packed_attention`, `--packed_attention`): transformers reads packed position
ids as variable-length boundaries for flash-attention only in a batch of one row
(`modeling_flash_attention_utils._is_packed_sequence`), and sdpa on CUDA computes the masked square of
every row. So on CUDA the packed path runs its own attention, `_packed_kernel_attention`: the boundaries
of all rows of the batch at once, handed to torch's variable-length flash-attention
(`torch.nn.attention.varlen.varlen_attn`) when a probe finds that it runs, forward and backward, and
matches per-example sdpa on packed rows; else to flash-attn's `flash_attn_varlen_func` when that package
is installed and passes the same probe; else masked sdpa. On CPU: per-example sdpa. The choice is made
once, before the model loads, and logged with its reason.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import importlib
import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import AttentionInterface, DataCollatorWithFlattening
from transformers.masking_utils import AttentionMaskInterface

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.modeling import IGNORE_INDEX

logger = logging.getLogger(__name__)


def pack_rows(lengths: Sequence[int], row_tokens: int) -> List[List[int]]:
    """Groups examples into rows of at most `row_tokens` tokens, best-fit decreasing.

    Examples are placed longest first, each into the open row it fills most tightly (a new row when none
    has room), which leaves close to the least possible free space for this kind of greedy packing.

    Args:
        lengths: token count of each example.
        row_tokens: capacity of a row; every length must fit.
    Returns:
        Rows as lists of example indices, in the order the rows were opened. Deterministic.
    Raises:
        ValueError: an example longer than `row_tokens`.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > row_tokens:
        i = int(lengths.argmax())
        raise ValueError(f"example {i} has {int(lengths[i])} tokens, more than a packed row holds ({row_tokens}).")
    # Longest first; ties keep dataset order so the result does not depend on the sort's stability.
    order = np.lexsort((np.arange(len(lengths)), -lengths))
    rows: List[List[int]] = []
    by_free: List[tuple] = []  # (free tokens, row index), sorted: bisect finds the tightest row that fits
    for i in order:
        n = int(lengths[i])
        k = bisect.bisect_left(by_free, (n, -1))
        if k == len(by_free):
            rows.append([int(i)])
            bisect.insort(by_free, (row_tokens - n, len(rows) - 1))
            continue
        free, r = by_free.pop(k)
        rows[r].append(int(i))
        bisect.insort(by_free, (free - n, r))
    return rows


class PackedDataset(Dataset):
    """Rows of packed examples over a dataset whose items are {"input_ids", "labels"} tensors.

    Each item is one row, already flattened: `input_ids`, `labels` (the first label of each example set
    to -100) and `position_ids` restarting at 0 for each example, as `DataCollatorWithFlattening` makes them.
    """

    def __init__(self, examples: Dataset, lengths: Sequence[int], row_tokens: int):
        self.examples = examples
        self.row_tokens = row_tokens
        self.rows = pack_rows(lengths, row_tokens)
        self._flatten = DataCollatorWithFlattening(separator_id=IGNORE_INDEX, return_tensors="pt")
        lengths = np.asarray(lengths, dtype=np.int64)
        self.tokens = int(lengths.sum())
        self.row_lengths = np.array([int(lengths[r].sum()) for r in self.rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i) -> Dict[str, torch.Tensor]:
        batch = self._flatten([self.examples[j] for j in self.rows[i]])
        return {key: batch[key][0] for key in ("input_ids", "labels", "position_ids")}

    @property
    def fill(self) -> float:
        """Fraction of the rows' capacity holding real tokens."""
        return self.tokens / max(1, len(self.rows) * self.row_tokens)


class DataCollatorForPackedRows:
    """Stacks packed rows (or plain examples) into a batch with no attention mask.

    Rows shorter than the longest in the batch are padded at the end with the pad id, label -100 and
    position ids that start again at 0, so the padding forms its own block that no real token attends to.
    A plain example (no `position_ids`, e.g. from the evaluation set) is a row of one example, so the
    evaluation loss is computed with the same masking as in the padded path.

    With `supervised_logits_only`, the batch also carries `logits_to_keep` (a boolean mask of the positions
    whose next token is in the loss) and `shift_labels` (those next tokens): the model then projects only
    those positions onto the vocabulary, and the loss, the same sum over the same tokens, skips the prompt.
    See `supports_supervised_logits`.
    """

    def __init__(self, pad_token_id: int, supervised_logits_only: bool = False):
        self.pad_token_id = pad_token_id
        self.supervised_logits_only = supervised_logits_only

    def __call__(self, instances: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in instances)
        n = len(instances)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        for r, x in enumerate(instances):
            k = len(x["input_ids"])
            input_ids[r, :k] = x["input_ids"]
            labels[r, :k] = x["labels"]
            position_ids[r, :k] = x["position_ids"] if "position_ids" in x else torch.arange(k)
            position_ids[r, k:] = torch.arange(width - k)
        batch = dict(input_ids=input_ids, labels=labels, position_ids=position_ids)
        if self.supervised_logits_only:
            batch.update(supervised_positions(labels))
        return batch


def supervised_positions(labels: torch.Tensor) -> Dict[str, torch.Tensor]:
    """`logits_to_keep` and `shift_labels` for a causal LM: the positions whose next label is in the loss.

    Position t predicts label t+1 (the shift every causal LM loss makes), so the mask is that of the labels
    shifted left by one; `shift_labels` holds those labels, flat, in the order the model gathers the
    positions (row by row), as transformers' `slice_logits_to_keep` and `ForCausalLMLoss` expect.
    """
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    return dict(logits_to_keep=keep, shift_labels=shifted[keep])


@contextlib.contextmanager
def _probe(model) -> Iterator[Tuple[Callable[[int], torch.Tensor], torch.device]]:
    """Runs a check's forwards in eval mode without gradients, then restores the training mode.

    Yields a function giving n seeded random token ids (above the usual special ids 0-2) and the model's device.
    """
    config = model.config
    vocab = config.get_text_config().vocab_size if hasattr(config, "get_text_config") else config.vocab_size
    gen = torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield (lambda n: torch.randint(3, vocab, (n,), generator=gen)), next(model.parameters()).device
    finally:
        model.train(was_training)


def prepare_model_for_packing(model, probe: bool = True) -> Optional[bool]:
    """Makes `model` keep packed examples apart, and checks that it does (`check_keeps_examples_apart`).

    transformers reads packed position ids only when the forward builds no key/value cache, and a model
    whose config says `use_cache=True` (LLaMA's does) builds one on every forward, in training too; the
    examples of a row would then attend to each other. So the cache is switched off here, for training.

    Args:
        model: the causal LM as it will train.
        probe: run the check (False where the weights are sharded across processes and cannot run alone).
    Returns:
        The previous `model.config.use_cache`, to restore before saving the model.
    Raises:
        UsageError: the model still lets tokens attend across example boundaries (the cache setting is
            then left as it was).
    """
    config = model.config
    previous = getattr(config, "use_cache", None)
    config.use_cache = False
    if probe:
        try:
            check_keeps_examples_apart(model)
        except UsageError:
            config.use_cache = previous
            raise
    return previous


def check_keeps_examples_apart(model) -> None:
    """Checks on a probe row [A, B] that B gets the logits of B alone.

    Raises:
        UsageError: the model lets tokens attend across packed example boundaries, or takes no position
            ids; the message names its class and attention implementation.
    """
    impl = getattr(model.config, "_attn_implementation", None)
    try:
        with _probe(model) as (random_ids, device):
            a, b = random_ids(7), random_ids(5)
            packed = torch.cat([a, b])[None].to(device)
            positions = torch.cat([torch.arange(7), torch.arange(5)])[None].to(device)
            alone = model(input_ids=b[None].to(device)).logits[0].float()
            together = model(input_ids=packed, position_ids=positions).logits[0, 7:].float()
    except TypeError as e:
        raise UsageError(
            f"--packing: {type(model).__name__}.forward does not take position_ids ({e}); packing needs a model "
            "whose attention restarts at each example (LLaMA, Mistral, Qwen2, Gemma, ...). Drop --packing."
        ) from None
    scale = alone.abs().max().clamp_min(1e-6)
    if ((together - alone).abs().max() / scale).item() > 1e-2:
        raise UsageError(
            f"--packing: {type(model).__name__} with attn_implementation={impl!r} lets tokens attend across "
            "packed example boundaries (it builds its attention mask without the position ids), so packed "
            "training would leak between examples. Use a model family that honours packed position ids "
            "(LLaMA, Mistral, Qwen2, Gemma, ...) or drop --packing (--group_by_length True cuts most padding)."
        )


@contextlib.contextmanager
def packing_mode(model, probe: bool = True, attention: Optional["PackedAttention"] = None) -> Iterator[bool]:
    """Switches `model` to packed training for the block, and back when the block ends.

    Inside the block the model builds no key/value cache (`prepare_model_for_packing`) and runs its
    attention through `attention` (`choose_packed_attention`; None keeps the loaded sdpa, which masks the
    square of each row); each step is checked on a probe row. Afterwards the cache setting and the
    attention implementation are what they were, so the saved model generates as usual.

    Args:
        model: the causal LM before any wrapping (LoRA adapters may be added inside the block).
        probe: run the checks (False under DeepSpeed ZeRO-3, whose sharded weights cannot run a forward
            before the engine starts; the forward's signature then decides about the LM head).
        attention: the packed attention chosen before the model loaded.
    Yields:
        Whether the LM head can run on the loss-bearing positions only (`supports_supervised_logits`).
    Raises:
        UsageError: the model cannot keep packed examples apart, or cannot take a forced attention.
    """
    use_cache = prepare_model_for_packing(model, probe)
    attn_implementation = None
    try:
        if attention is not None and attention.name != "sdpa":
            attn_implementation = use_packed_attention(model, attention)
            if attn_implementation is not None and probe:
                check_keeps_examples_apart(model)
        yield supports_supervised_logits(model, probe)
    finally:
        model.config.use_cache = use_cache
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)


def supports_supervised_logits(model, probe: bool = True) -> bool:
    """Whether `model` gives the same loss when it projects only the supervised positions onto the vocabulary.

    In Alpaca's examples most tokens are prompt, masked out of the loss, yet a causal LM computes logits
    (hidden size x vocabulary multiply-adds per token, then a softmax over the vocabulary) at every
    position. transformers' causal LMs take `logits_to_keep` as a boolean mask and the loss takes
    `shift_labels`, so the packed path hands both over and the prompt positions skip the LM head: the loss
    is the same sum over the same tokens. A model whose forward has no `logits_to_keep`, or that gives
    another loss with it on a probe row, keeps computing every logit.

    Args:
        model: the causal LM as it will train.
        probe: compare the two losses on a short row (False where the weights are sharded across
            processes and cannot run alone; the forward's signature then decides).
    """
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return False
    if not probe:
        return True
    try:
        with _probe(model) as (random_ids, device):
            input_ids = random_ids(12)[None]
            labels = input_ids.clone()
            labels[0, :5] = IGNORE_INDEX
            labels[0, 8] = IGNORE_INDEX
            batch = dict(input_ids=input_ids, labels=labels, position_ids=torch.arange(12)[None])
            full = model(**{k: v.to(device) for k, v in batch.items()}).loss
            batch.update(supervised_positions(labels))
            kept = model(**{k: v.to(device) for k, v in batch.items()})
    except (TypeError, ValueError, RuntimeError, IndexError) as e:
        # A probe of a capability: a forward that rejects the mask means "no", said in the log, not a failure.
        logger.warning("packing: %s fails with logits_to_keep as a mask (%s: %s); the LM head runs on every "
                       "position.", type(model).__name__, type(e).__name__, e)
        return False
    if kept.loss is None or kept.logits.shape[-2] != int(batch["logits_to_keep"].sum()):
        return False
    return bool(torch.isclose(kept.loss.float(), full.float(), rtol=1e-4, atol=1e-5))


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

    Why: sdpa over a whole packed row computes (and masks) the full square. On CPU that square cost
    a 7M LLaMA 16% of its packed step time at rows of 512 tokens; per-example calls compute only the
    causal blocks, as flash-attention's variable-length kernels do on GPU. `packing_mode` reruns its
    probe after the switch.
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
KERNEL_FORWARDS = dict.fromkeys(KERNELS, 0)  # attention calls that ran each kernel (the GPU check reports them)


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
    from packaging.version import Version

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
    return _packed_kernel_attention("varlen", module, query, key, value, **kwargs)


def _flash_attention(module, query, key, value, attention_mask, **kwargs):
    return _packed_kernel_attention("flash", module, query, key, value, **kwargs)


def _packed_kernel_attention(kernel: str, module, query, key, value, dropout=0.0, scaling=None, position_ids=None,
                             **kwargs):
    """Causal attention within each packed example through a variable-length kernel, all rows in one call.

    Query/key/value are [batch, heads, length, head_dim]; an example starts wherever the position id is 0
    (and at each row's start), so the padding block the collator appends is an example of its own. Under
    autocast they are cast to its dtype, as sdpa would cast them (rotary embeddings hand query and key
    over in float32 there). float32 without autocast (train.py's start-up probes), and dropout with torch's
    kernel (which has none), go through per-example sdpa instead: the same result, only slower.
    Returns [batch, length, heads, head_dim], as transformers' attention functions do.
    """
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        query, key, value = (t.to(dtype) for t in (query, key, value))
    if position_ids is None:
        position_ids = torch.arange(query.shape[2], device=query.device)[None]
    dropout = dropout if module.training else 0.0
    if query.dtype not in (torch.float16, torch.bfloat16) or (dropout and kernel == "varlen"):
        return _packed_sdpa_attention(module, query, key, value, None, dropout, scaling, position_ids)
    b, h, n, d = query.shape
    bounds, longest = _boundaries(position_ids, b)
    q, k, v = (t.transpose(1, 2).reshape(b * n, t.shape[1], t.shape[3]) for t in (query, key, value))
    out = _run_kernel(kernel, q, k, v, bounds, longest, scaling, dropout)
    KERNEL_FORWARDS[kernel] += 1
    return out.reshape(b, n, h, out.shape[-1]), None


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
    from torch.nn.attention import varlen

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
    calls = KERNEL_FORWARDS[kernel]
    try:
        positions = torch.stack([torch.cat([torch.arange(n) for n in lengths]) for lengths in rows]).to(device)
        qkv = [torch.randn(len(rows), heads, positions.shape[1], head_dim, generator=gen).to(device, dtype)
               .requires_grad_()
               for heads, dtype in ((8, torch.float32), (4, torch.float32), (4, torch.bfloat16))]
        module = torch.nn.Module()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out, _ = _packed_kernel_attention(kernel, module, *qkv, scaling=head_dim ** -0.5, position_ids=positions)
        if KERNEL_FORWARDS[kernel] != calls + 1:
            return "the kernel was not called (fell back to per-example sdpa)"
        out.float().square().sum().backward()
        ref_in = [t.detach().to(torch.bfloat16).float().requires_grad_() for t in qkv]
        ref, _ = _packed_sdpa_attention(module.eval(), *ref_in, None, scaling=head_dim ** -0.5, position_ids=positions)
        ref.square().sum().backward()
    except Exception as e:  # a capability probe: any failure means "not here", said in the log line
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    finally:
        KERNEL_FORWARDS[kernel] = calls
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
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        raise ImportError(f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn") from None
