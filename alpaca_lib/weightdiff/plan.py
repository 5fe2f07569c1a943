"""How the raw model lines up with the tuned model or the diff: the resize the original applied, and the check.

    plan = plan_raw(path_raw)                                  # tokenizer + config only, no weights
    keys = check_compatible(diff, raw, plan, "path_diff")      # raises WeightDiffError naming each problem
    rows = resize_rows(raw.load(key).float(), plan.vocab_size, plan.num_new_tokens)

The original Alpaca script adds the special tokens the raw tokenizer lacks (LLaMA: `[PAD]`) and sets the new
embedding / lm_head rows to the mean of the old rows (`smart_tokenizer_and_embedding_resize`) before any
arithmetic; `plan_raw` decides that resize without loading a weight, `resize_rows` applies it to one tensor
bit for bit, and `check_compatible` refuses inputs that do not fit it, before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.modeling import missing_special_tokens
from alpaca_lib.weightdiff.weights import Checkpoint

# Buffers older transformers versions saved in checkpoints but today's models recompute from the config
# (LLaMA's rotary inverse frequencies). They are not weights: never diffed, written or hashed.
DERIVED_BUFFER_SUFFIXES = (".rotary_emb.inv_freq",)


class WeightDiffError(UsageError):
    """The inputs do not fit together or a check failed; the message names the tensors and the fix."""


def is_derived_buffer(key: str) -> bool:
    return key.endswith(DERIVED_BUFFER_SUFFIXES)


@dataclass
class RawPlan:
    """How the raw model is extended before the arithmetic, as the original script extends it.

    Attributes:
        special_tokens: what `missing_special_tokens` adds (LLaMA: {"pad_token": "[PAD]"}).
        num_new_tokens: tokens actually added to the tokenizer.
        vocab_size: the tokenizer's length afterwards: rows of the resized embedding / lm_head.
        row_keys: checkpoint keys of the embedding and (untied) lm_head weights.
    """

    special_tokens: dict
    num_new_tokens: int
    vocab_size: int
    row_keys: tuple[str, ...]


def plan_raw(path_raw: str | os.PathLike) -> RawPlan:
    """Reads the raw tokenizer and config (no weights) and decides how the raw model is resized."""
    # deferred: transformers takes seconds to import, and `weight_diff.py --help` needs none of it
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path_raw)
        config = AutoConfig.from_pretrained(path_raw)
    except (OSError, ValueError) as e:
        raise WeightDiffError(
            f"path_raw={path_raw}: cannot read its tokenizer/config ({e}); give the Hugging Face folder of the "
            "base model (config.json, tokenizer files and weights)"
        ) from e
    special = missing_special_tokens(tokenizer)
    num_new = tokenizer.add_special_tokens(special)
    # The parameter names of the embedding and lm_head come from the architecture itself, built on the
    # meta device (no memory, no weights read).
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = {id(p): n for n, p in model.named_parameters()}  # tied weights appear once, under one name
    row_keys = [names[id(model.get_input_embeddings().weight)]]
    out = model.get_output_embeddings()
    if out is not None and id(out.weight) in names and names[id(out.weight)] not in row_keys:
        row_keys.append(names[id(out.weight)])
    return RawPlan(special, num_new, len(tokenizer), tuple(row_keys))


def resize_rows(weight: torch.Tensor, vocab_size: int, num_new_tokens: int) -> torch.Tensor:
    """The rows `smart_tokenizer_and_embedding_resize` gives an embedding matrix, computed on one tensor.

    `resize_token_embeddings` keeps the first rows, then the last `num_new_tokens` rows are set to the
    mean of all rows before them; the same views and reductions are used here so the result is bitwise
    the same. Always runs on the CPU so the result does not depend on --device.

    Args:
        weight: float32 [old_rows, hidden] matrix.
        vocab_size: rows after resizing (the tokenizer length).
        num_new_tokens: rows to set to the mean.
    Returns:
        The resized matrix (`weight` itself when nothing changes).
    """
    old_rows = weight.shape[0]
    if vocab_size == old_rows and num_new_tokens == 0:
        return weight
    if vocab_size - num_new_tokens > old_rows:
        # The original would fill those rows with random initial values: nothing reproducible to compute.
        raise WeightDiffError(
            f"the raw embedding has {old_rows} rows but its tokenizer has {vocab_size - num_new_tokens} tokens "
            f"before adding {num_new_tokens}; the rows in between would be random. Use a base whose tokenizer "
            "matches its embedding size"
        )
    out = torch.empty((vocab_size, *weight.shape[1:]), dtype=weight.dtype)
    keep = min(old_rows, vocab_size)
    out[:keep] = weight[:keep]
    if num_new_tokens > 0:
        out[-num_new_tokens:] = out[:-num_new_tokens].mean(dim=0, keepdim=True)
    return out


def check_compatible(target: Checkpoint, raw: Checkpoint, plan: RawPlan, target_name: str) -> list[str]:
    """Checks that every tensor of `target` (the tuned model or the diff) has a raw counterpart of the same
    shape after the resize. Raises WeightDiffError naming each problem; returns the keys to process."""
    keys = [k for k in target.infos if not is_derived_buffer(k)]
    raw_keys = {k for k in raw.infos if not is_derived_buffer(k)}
    missing = [k for k in keys if k not in raw_keys]
    extra = sorted(raw_keys - set(keys))
    mismatched, vocab_mismatch = [], False
    for k in keys:
        if k not in raw_keys:
            continue
        t, r = target.infos[k], raw.infos[k]
        expected = r.shape
        if k in plan.row_keys and r.shape:
            expected = (plan.vocab_size, *r.shape[1:])
        if k in plan.row_keys and r.shape and plan.vocab_size - plan.num_new_tokens > r.shape[0]:
            vocab_mismatch = True
            mismatched.append(
                f"{k}: raw has {r.shape[0]} rows but its tokenizer already has {plan.vocab_size - plan.num_new_tokens} "
                "tokens (the original would leave the rows in between random)"
            )
            continue
        if t.shape != expected:
            note = ""
            if k in plan.row_keys:
                vocab_mismatch = True
                note = f" (raw has {r.shape[0]} rows; its tokenizer gets {plan.num_new_tokens} new token(s) -> {plan.vocab_size})"
            mismatched.append(f"{k}: {target_name} {list(t.shape)} vs raw {list(expected)}{note}")
        if not (t.dtype.is_floating_point and r.dtype.is_floating_point):
            mismatched.append(f"{k}: dtypes {t.dtype} / {r.dtype}; only floating-point weights can be diffed")
    if not (missing or extra or mismatched):
        return keys
    lines = [f"path_raw={raw.folder} does not fit {target_name}={target.folder}:"]
    if mismatched:
        lines.append(f"  {len(mismatched)} shape mismatch(es):")
        lines += [f"    {m}" for m in mismatched]
    if missing:
        lines.append(f"  {len(missing)} tensor(s) in {target_name} but not in raw: {', '.join(missing)}")
    if extra:
        lines.append(f"  {len(extra)} tensor(s) in raw but not in {target_name}: {', '.join(extra)}")
    if vocab_mismatch:
        lines.append(
            "Likely cause: the base was converted with a different vocabulary or tokenizer. Alpaca's diff expects "
            "the original LLaMA tokenizer (32000 tokens, no pad token), to which [PAD] is added -> 32001 rows. "
            "Fix: convert the original LLaMA weights with transformers' convert_llama_weights_to_hf.py and pass "
            "that folder as --path_raw (a tokenizer that already defines a pad token, or a resized base, will not fit)."
        )
    if missing or extra:
        lines.append(
            "Likely cause: a base of another architecture or size, or weights saved under other names (e.g. "
            "without the 'model.' prefix). Fix: pass the base model the diff was made from, in Hugging Face format."
        )
    raise WeightDiffError("\n".join(lines))
