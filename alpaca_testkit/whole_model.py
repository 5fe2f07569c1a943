"""The original Alpaca weight_diff.py method, whole models in memory: the reference the streaming engine is pinned to.

    from alpaca_testkit.whole_model import whole_model_make_diff, whole_model_recover
    model, naive_sum = whole_model_recover(path_raw, path_diff)

tests/test_weight_diff.py compares `alpaca_lib.weightdiff.diffing` with these bit for bit, and
bench/bench_weight_diff.py measures them as the baseline. Both models are loaded in float32 and the raw one gets
the original's `[PAD]` resize (`smart_tokenizer_and_embedding_resize`), so these need twice the model's size in
memory: test and bench use only, never the product.
"""

from __future__ import annotations

import os

import torch

from alpaca_lib.core.modeling import missing_special_tokens, smart_tokenizer_and_embedding_resize


@torch.inference_mode()
def whole_model_load(path: str | os.PathLike, with_special_tokens: bool = False):
    """Loads a whole model in float32 as the original script did (and resizes a raw one)."""
    # deferred: test modules import this while pytest collects them, and transformers takes seconds to import
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if with_special_tokens:
        smart_tokenizer_and_embedding_resize(missing_special_tokens(tokenizer), tokenizer, model)
    return model, tokenizer


@torch.inference_mode()
def whole_model_recover(path_raw, path_diff, path_tuned=None):
    """The original recover: both models in memory, `state_dict_recovered[key].add_(state_dict_raw[key])`.

    Returns:
        (recovered model, naive sum).
    """
    model_raw, _ = whole_model_load(path_raw, with_special_tokens=True)
    model, tokenizer = whole_model_load(path_diff)
    sd, sd_raw = model.state_dict(), model_raw.state_dict()
    for key in sd:
        sd[key].add_(sd_raw[key])
    total = sum(sd[key].sum() for key in sd)
    if path_tuned is not None:
        model.save_pretrained(path_tuned)
        tokenizer.save_pretrained(path_tuned)
    return model, float(total)


@torch.inference_mode()
def whole_model_make_diff(path_raw, path_tuned):
    """The original make_diff's arithmetic: returns the tuned model with `tuned + (-raw)` in place."""
    model_raw, _ = whole_model_load(path_raw, with_special_tokens=True)
    model, _ = whole_model_load(path_tuned)
    sd, sd_raw = model.state_dict(), model_raw.state_dict()
    for key in sd:
        sd[key].add_(-sd_raw[key])
    return model
