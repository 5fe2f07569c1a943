"""LoRA (and QLoRA) fine-tuning through peft, saved both as an adapter and as a merged full model.

    python train.py --lora_r 8 --lora_alpha 16 --lora_dropout 0.05 --lora_target_modules q_proj,v_proj ...

`output_dir/adapter/` holds the adapter (peft's `adapter_config.json` + `adapter_model.safetensors`);
`output_dir` itself holds the base with the adapter merged in, so it loads with `AutoModelForCausalLM`
and goes through `weight_diff.py` exactly like the result of full fine-tuning.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import List, Union

import torch

from alpaca_lib.core.errors import UsageError
from alpaca_lib.training.saving import save_final

logger = logging.getLogger(__name__)

ADAPTER_SUBDIR = "adapter"
# The attention query and value projections, as alpaca-lora trains them; LLaMA, OPT, Mistral, Qwen2 and
# Gemma all name them so. "all-linear" (peft's spelling) adapts every linear layer but the output head.
DEFAULT_TARGET_MODULES = "q_proj,v_proj"


def parse_target_modules(spec: str) -> Union[List[str], str]:
    """Splits a comma-separated `--lora_target_modules` value ("all-linear" is passed through)."""
    spec = (spec or "").strip()
    if spec == "all-linear":
        return spec
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise UsageError("--lora_target_modules is empty; give layer names such as q_proj,v_proj, or all-linear.")
    return names


def _linear_layer_names(model) -> List[str]:
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt", "Conv1D"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_qlora_available() -> None:
    """Raises a clear error unless 4-bit loading can work here (bitsandbytes installed and a CUDA GPU).

    Raises:
        UsageError: saying which of the two is missing and what to do instead.
    """
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (none is visible)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install 'bitsandbytes>=0.45')")
    if missing:
        raise UsageError(
            "--load_in_4bit (QLoRA) needs " + " and ".join(missing) + ". Drop --load_in_4bit to train LoRA "
            "adapters on the unquantized model (--lora_r N alone)."
        )


def quantization_config(compute_dtype: torch.dtype):
    """The QLoRA recipe: NF4 weights with double quantization, matmuls in `compute_dtype`."""
    from transformers import BitsAndBytesConfig  # only under --load_in_4bit (train.py's flags import this module)

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def add_lora(model, r: int, alpha: float, dropout: float, target_modules: str, gradient_checkpointing: bool = False):
    """Freezes `model` and wraps it with trainable LoRA adapters.

    Args:
        model: a causal LM (already resized for any added special tokens; 4-bit quantized for QLoRA).
        r: adapter rank (> 0).
        alpha: scaling numerator; the update is scaled by alpha / r.
        dropout: dropout on the adapter's input.
        target_modules: comma-separated layer names (e.g. "q_proj,v_proj") or "all-linear".
        gradient_checkpointing: whether the Trainer will checkpoint activations (inputs then need grads).
    Returns:
        The `peft.PeftModel`.
    Raises:
        UsageError: a bad rank or dropout, or target names the model does not have (the message lists the
            names it has).
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # peft only under --lora_r

    if r <= 0:
        raise UsageError(f"--lora_r must be a positive rank to train LoRA adapters, got {r}.")
    if not 0 <= dropout < 1:
        raise UsageError(f"--lora_dropout must be in [0, 1), got {dropout}.")
    targets = parse_target_modules(target_modules)
    if isinstance(targets, list):
        available = _linear_layer_names(model)
        unknown = [t for t in targets if t not in available]
        if unknown:
            raise UsageError(
                f"--lora_target_modules: {type(model).__name__} has no linear layer named {', '.join(unknown)}; "
                f"its linear layers are {', '.join(available)} (or use all-linear)."
            )
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        # With the base frozen, checkpointed blocks would see inputs that need no grad and skip backward.
        model.enable_input_require_grads()
    config = LoraConfig(
        task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none"
    )
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA r=%d alpha=%g on %s: %d of %d parameters trainable (%.3f%%)",
                r, alpha, targets, trainable, total, 100 * trainable / total)
    return model


def save_adapter_and_merged(trainer, output_dir: str, tokenizer, load_full_precision_base=None) -> None:
    """Saves the adapter to `output_dir/adapter` and the merged full model and tokenizer to `output_dir`.

    Args:
        trainer: the Trainer whose model is a `PeftModel` (possibly wrapped for DDP).
        output_dir: the run's output folder.
        tokenizer: saved next to both.
        load_full_precision_base: for QLoRA, a function returning the base model unquantized (with the
            tokenizer's added tokens): merging into 4-bit weights would round them, so the adapter is
            merged into a fresh full-precision copy instead.
    """

    def save(staging: str) -> None:
        adapter_dir = os.path.join(staging, ADAPTER_SUBDIR)
        trainer.save_model(adapter_dir)  # the Trainer saves only the adapter of a PeftModel (on the main process)
        if trainer.args.should_save:
            peft_model = trainer.accelerator.unwrap_model(trainer.model)
            if load_full_precision_base is not None:
                from peft import PeftModel  # as in add_lora

                peft_model = PeftModel.from_pretrained(load_full_precision_base(), adapter_dir)
            merged = peft_model.merge_and_unload()
            merged.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)

    save_final(trainer, output_dir, save)  # written whole to a staging folder, then moved into place
    if trainer.args.should_save:
        logger.info("saved the LoRA adapter to %s and the merged model to %s",
                    os.path.join(output_dir, ADAPTER_SUBDIR), output_dir)
