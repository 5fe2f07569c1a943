"""A model made ready for packed rows, with the checks that it keeps the examples of a row apart.

    with packing_mode(model, probe=True, attention=choose_packed_attention(...)) as supervised_logits_only:
        trainer.train()   # no key/value cache, the chosen attention; both restored when the block ends

transformers turns position ids that restart at 0 into a block-diagonal causal mask when no `attention_mask` is
passed and no key/value cache is built (`masking_utils.find_packed_sequence_indices`; for sdpa, eager and
flex_attention alike), so packed training runs with `use_cache=False`, and a probe row checks, before
training, that the loaded model really keeps examples apart (OPT, for one, builds its mask without the position
ids). A second probe decides whether the LM head can run on the loss-bearing positions only
(`supports_supervised_logits`). The rows themselves are built by `alpaca_lib.data.packing`; the attention
inside them is `alpaca_lib.training.packed_attention`'s.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Callable, Iterator, Optional, Tuple

import torch

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.modeling import IGNORE_INDEX
from alpaca_lib.data.packing import supervised_positions
from alpaca_lib.training.packed_attention import PackedAttention, use_packed_attention

logger = logging.getLogger(__name__)


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
def packing_mode(model, probe: bool = True, attention: Optional[PackedAttention] = None) -> Iterator[bool]:
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
