"""Supervised fine-tuning of a causal LM on Alpaca data, with the prompt masked out of the loss.

    torchrun --nproc_per_node=4 --master_port=29500 train.py \
        --model_name_or_path <hf_llama_dir> --data_path ./alpaca_data.json --bf16 True \
        --output_dir <out> --num_train_epochs 3 --per_device_train_batch_size 4 \
        --gradient_accumulation_steps 8 --evaluation_strategy "no" --save_strategy "steps" \
        --save_steps 2000 --save_total_limit 1 --learning_rate 2e-5 --weight_decay 0. \
        --warmup_ratio 0.03 --lr_scheduler_type "cosine" --logging_steps 1 \
        --fsdp "full_shard auto_wrap" --fsdp_transformer_layer_cls_to_wrap 'LlamaDecoderLayer' --tf32 True

Every flag of the original Alpaca commands is accepted: the names transformers 5 renamed or removed
(`--evaluation_strategy`, `--warmup_ratio`, `--fsdp_transformer_layer_cls_to_wrap`, `--group_by_length`)
are mapped to their current spelling in `TrainingArguments.__post_init__`. The flags and all their checks live in
alpaca_lib/training/args.py; the dataset, the collator and the data module in alpaca_lib/data/supervised.py.

Beyond the original recipe, all opt-in (the defaults train exactly as above):
    --group_by_length True      batches of similar length: less padding, same examples per step
    --packing True              padding-free rows of up to --model_max_length tokens (alpaca_lib/data/packing.py)
    --lora_r 8 [--lora_alpha 16 --lora_dropout 0.05 --lora_target_modules q_proj,v_proj] [--load_in_4bit True]
                                LoRA adapters (alpaca_lib/training/lora.py): output_dir/adapter + merged model in output_dir
    --eval_data_path F | --val_set_size N   evaluation set, with --evaluation_strategy steps --eval_steps K
    --prompt_template chat [--system_prompt TEXT] | my_template.json
                                the model's chat template (the loss on every assistant turn; conversation records)
                                or a template file (alpaca_lib/data/formats.py); output_dir/prompt_format.json: which

Killed? Run the same command again: it resumes from the newest complete checkpoint in --output_dir
(alpaca_lib/training/run.py holds the run's lifecycle, alpaca_lib/training/start.py decides where it starts);
--overwrite_output_dir True starts afresh. SIGTERM saves a checkpoint first (alpaca_lib/training/resumable.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from typing import Iterator, Optional, Sequence

import torch
import transformers
from transformers.integrations import is_deepspeed_zero3_enabled

from alpaca_lib.core.errors import UsageError, exit_with
from alpaca_lib.core.modeling import (
    DEFAULT_BOS_TOKEN,
    DEFAULT_EOS_TOKEN,
    DEFAULT_PAD_TOKEN,
    DEFAULT_UNK_TOKEN,
    IGNORE_INDEX,
    missing_special_tokens,
    smart_tokenizer_and_embedding_resize,
)
from alpaca_lib.core.quiet import quiet_entry_point
from alpaca_lib.core.signals import INTERRUPTED_EXIT_CODE, exit_interrupted
from alpaca_lib.data.formats import PromptFormat, save_format
from alpaca_lib.data.sources import open_source
from alpaca_lib.data.supervised import (
    DataCollatorForSupervisedDataset,
    SupervisedDataset,
    make_supervised_data_module,
    preprocess,
)
from alpaca_lib.training.args import (
    DataArguments,
    FlagError,
    ModelArguments,
    TrainingArguments,
    check_flags,
    parse_flags,
)
from alpaca_lib.training.deepspeed_ops import announce_first_compile
from alpaca_lib.training.lora import ADAPTER_SUBDIR, add_lora, quantization_config, save_adapter_and_merged
from alpaca_lib.training.lossplot import plot_loss
from alpaca_lib.training.packed_attention import choose_packed_attention
from alpaca_lib.training.packed_model import packing_mode
from alpaca_lib.training.resumable import ResumableTrainer
from alpaca_lib.training.run import Preempted, training_run
from alpaca_lib.training.saving import save_final
from alpaca_lib.training.trainlog import describe_launch, log_callbacks, log_progress_off_terminal
from utils import PROMPT_DICT

__all__ = [
    "PROMPT_DICT", "IGNORE_INDEX", "DEFAULT_PAD_TOKEN", "DEFAULT_EOS_TOKEN", "DEFAULT_BOS_TOKEN",
    "DEFAULT_UNK_TOKEN", "ModelArguments", "DataArguments", "TrainingArguments",
    "smart_tokenizer_and_embedding_resize", "preprocess", "SupervisedDataset",
    "DataCollatorForSupervisedDataset", "make_supervised_data_module", "train", "FlagError", "Preempted",
    "ADAPTER_SUBDIR",
]

logger = logging.getLogger("train")


def safe_save_model_for_hf_trainer(trainer: transformers.Trainer, output_dir: str) -> None:
    """Saves a complete model (gathered from FSDP/DeepSpeed shards) and the tokenizer to `output_dir`.

    The files are written to a staging folder first and moved into place only once all of them are
    there and include the weights (`alpaca_lib.training.saving`).
    """

    def check(staging):
        names = sorted(os.listdir(staging)) if staging.is_dir() else []
        if not any(n.endswith((".safetensors", ".bin")) and "optim" not in n for n in names):
            raise RuntimeError(
                f"{output_dir}: no model weights were written (only {names}). With DeepSpeed ZeRO-3 set "
                "\"stage3_gather_16bit_weights_on_model_save\": true in the config (configs/ has it)."
            )

    save_final(trainer, output_dir, trainer.save_model, check)


def _load_tokenizer(model_args: ModelArguments, training_args: TrainingArguments):
    extra = {"gguf_file": model_args.gguf_file} if model_args.gguf_file else {}
    return transformers.AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
        **extra,
    )


def _load_model_and_tokenizer(model_args: ModelArguments, training_args: TrainingArguments,
                              prompt_format: Optional[PromptFormat] = None):
    """The model and its tokenizer (pad token added where missing); the tokenizer loads first, so that a
    `prompt_format` it cannot serve (chat without a chat template) stops the run before the weights load."""
    tokenizer = _load_tokenizer(model_args, training_args)
    if prompt_format is not None:
        prompt_format.check_tokenizer(tokenizer, model_args.model_name_or_path)
        unended = prompt_format.unended_answers(tokenizer, model_args.model_name_or_path)
        if unended:
            logger.warning(unended)
    dtype = model_args.torch_dtype if model_args.torch_dtype == "auto" else getattr(torch, model_args.torch_dtype)
    extra = {"gguf_file": model_args.gguf_file} if model_args.gguf_file else {}
    model_kwargs = dict(extra)
    if model_args.gguf_file:
        # Unpack the GGUF blocks into plain dense weights: a model left in GGUF blocks cannot be trained.
        model_kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    if model_args.load_in_4bit:
        compute_dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
        model_kwargs["quantization_config"] = quantization_config(compute_dtype)
        model_kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path, cache_dir=training_args.cache_dir, dtype=dtype, **model_kwargs
    )
    if getattr(model, "hf_quantizer", None) is not None and model_args.gguf_file:
        # Dense now: drop the quantization marks so the Trainer and save_pretrained treat it as a normal model.
        model.hf_quantizer.remove_quantization_config(model)
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tokenizer), tokenizer, model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def train(argv: Optional[Sequence[str]] = None) -> Optional[transformers.Trainer]:
    """Parses the command line, fine-tunes, and saves the model and tokenizer to --output_dir.

    Args:
        argv: the flags (default: the command line's).
    Returns:
        The Trainer, after the final save; None when --output_dir already holds the final model of this very
        run (nothing is trained or saved then, and a line on stderr says so).
    Raises:
        UsageError: bad flags or data, a refused resume, --output_dir in use by another job.
        Preempted: SIGTERM or Ctrl-C stopped training, after it saved a checkpoint to resume from.
    """
    quiet_entry_point()
    model_args, data_args, training_args = parse_flags(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # Everything that can be checked without the model is, before minutes go into loading it; nothing is
    # created before these checks pass.
    check_flags(model_args, data_args, training_args)
    prompt_format = data_args.prompt_format()
    if training_args.deepspeed and not torch.cuda.is_available():
        announce_first_compile()  # minutes of compiling, said before they start
    # Packed rows' attention is chosen on this device: a forced one that cannot run here stops the run now
    # (with --torch_dtype auto and neither --bf16 nor --fp16, once the weights load: their dtype decides).
    packed_attention = _packed_attention(model_args, training_args)
    # Read through once (a batch at a time) so that bad data stops the run here; tokenizing reads it again.
    records = open_source(data_args.data_path, data_args.data_split, data_args.data_columns, "--data_path").check()
    eval_records = open_source(data_args.eval_data_path, data_args.data_split, data_args.data_columns,
                               "--eval_data_path").check() if data_args.eval_data_path else None
    for source in (records, eval_records):  # conversations need --prompt_template chat
        if source is not None:
            source.check_format(prompt_format)

    # This job alone writes --output_dir from here on; where the run starts is decided before the model loads.
    with training_run(model_args, data_args, training_args, records.key(),
                      eval_records.key() if eval_records is not None else "") as run:
        if run.already_finished():
            return None
        # Seeded before the model loads, so that whatever it initialises (LoRA adapters, resized embeddings)
        # is the same in every run with this --seed: a resumed run then repeats the interrupted one exactly.
        transformers.set_seed(training_args.seed)
        run.check_weights()  # a damaged weight file in a local --model_name_or_path: one error line, after all else
        model, tokenizer = _load_model_and_tokenizer(model_args, training_args, prompt_format)
        logger.info("prompt format: %s", prompt_format.describe())
        # The Trainer switches the KV cache off for training (--use_cache); the saved model keeps the loaded setting.
        use_cache = model.config.use_cache
        with _packing(model, model_args, training_args, packed_attention) as supervised_logits:
            trainer = _make_trainer(model, tokenizer, model_args, data_args, training_args, records, eval_records,
                                    supervised_logits, run.sigterm)
            trainer.prompt_format = prompt_format  # into each checkpoint too: eval_model.py prompts any of them
            run.train(trainer)
        if training_args.should_save:  # the main process: training (and eval) loss per logged step
            plot_loss(trainer.state.log_history, training_args.output_dir,
                      title=f"{model_args.model_name_or_path} on {data_args.data_path}")
        with run.final_save(trainer):  # raises Preempted after SIGTERM or Ctrl-C; marks the run finished once saved
            trainer.save_state()
            model.config.use_cache = use_cache
            _save_final_model(trainer, tokenizer, model_args, training_args)
            if training_args.should_save:  # how to prompt the model: eval_model.py and scripts/loop.sh read it
                save_format(prompt_format, training_args.output_dir)
    return trainer


def _half_precision(model_args: ModelArguments, training_args: TrainingArguments,
                    loaded_dtype: Optional[torch.dtype] = None) -> Optional[bool]:
    """Whether training computes in bf16 or fp16, the only precisions the variable-length kernels take.

    Args:
        loaded_dtype: the dtype the weights loaded in (`model.dtype`), which --torch_dtype auto resolves to.
    Returns:
        True or False; None when only the loaded weights can tell (--torch_dtype auto, neither --bf16 nor
        --fp16, and no `loaded_dtype` yet).
    """
    if training_args.bf16 or training_args.fp16:
        return True
    if model_args.torch_dtype != "auto":
        return model_args.torch_dtype in ("bfloat16", "float16")
    if loaded_dtype is None:
        return None
    return loaded_dtype in (torch.bfloat16, torch.float16)


def _packed_attention(model_args: ModelArguments, training_args: TrainingArguments,
                      loaded_dtype: Optional[torch.dtype] = None):
    """The attention of packed rows (`choose_packed_attention`), or None: no --packing, or the choice hangs on a
    precision not known until the weights load (see `_half_precision`)."""
    if not training_args.packing:
        return None
    half = _half_precision(model_args, training_args, loaded_dtype)
    if half is None:
        # Only on a GPU, and with no attention named, does the precision change the choice: elsewhere it is made
        # (or a kernel that cannot run here refused) now, before the weights load.
        if training_args.device.type == "cuda" and training_args.packed_attention not in ("sdpa", "per_example"):
            return None
        half = False
    return choose_packed_attention(training_args.packed_attention, training_args.device, half)


@contextlib.contextmanager
def _packing(model, model_args: ModelArguments, training_args: TrainingArguments,
             packed_attention) -> Iterator[bool]:
    """`packing_mode` under --packing (the model is back to its usual attention and cache afterwards), else
    nothing; yields whether the LM head runs on the loss-bearing positions only.

    Args:
        packed_attention: `_packed_attention` before the model loaded; None under --torch_dtype auto, chosen
            here from the loaded weights' dtype.
    """
    if not training_args.packing:
        yield False
        return
    if packed_attention is None:
        packed_attention = _packed_attention(model_args, training_args, loaded_dtype=model.dtype)
    # Under DeepSpeed ZeRO-3 each process holds a shard of the weights: no forward can run before the
    # engine gathers them, so the probes are skipped there.
    with packing_mode(model, probe=not is_deepspeed_zero3_enabled(), attention=packed_attention) as supervised_logits:
        logger.info(
            "packing: the LM head runs on %s", "the loss-bearing positions only (prompt positions skip it)"
            if supervised_logits else f"every position ({type(model).__name__} takes no logits_to_keep mask)",
        )
        yield supervised_logits


def _make_trainer(model, tokenizer, model_args, data_args, training_args, records, eval_records,
                  supervised_logits: bool, sigterm: transformers.TrainerCallback) -> ResumableTrainer:
    """Adds LoRA adapters when asked, tokenizes the data and builds the Trainer, with `sigterm` among its callbacks."""
    if model_args.lora_r:
        model = add_lora(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                         model_args.lora_target_modules, training_args.gradient_checkpointing)
    # One process per machine tokenizes (and fills the cache); the others then read its result. Over several
    # machines sharing one cache folder, the first to build an entry locks it and the others read it once written.
    with training_args.main_process_first(local=True, desc="tokenizing the training data"):
        data_module = make_supervised_data_module(
            tokenizer=tokenizer, data_args=data_args, records=records, training_args=training_args,
            eval_records=eval_records, supervised_logits_only=supervised_logits, prompt_format=data_args.prompt_format(),
        )
    trainer = ResumableTrainer(model=model, processing_class=tokenizer, args=training_args,
                               callbacks=[sigterm, *log_callbacks(data_module["train_dataset"])], **data_module)
    log_progress_off_terminal(trainer)
    logger.info(describe_launch(trainer.accelerator.distributed_type.value, training_args.world_size,
                                training_args.device, int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or None))
    return trainer


def _save_final_model(trainer, tokenizer, model_args, training_args) -> None:
    if not model_args.lora_r:
        safe_save_model_for_hf_trainer(trainer=trainer, output_dir=training_args.output_dir)
        return
    reload_base = None
    if model_args.load_in_4bit:
        # Merging into 4-bit weights would round them: merge into an unquantized copy of the base.
        unquantized = dataclasses.replace(model_args, load_in_4bit=False)
        reload_base = lambda: _load_model_and_tokenizer(unquantized, training_args)[0]  # noqa: E731
    save_adapter_and_merged(trainer, training_args.output_dir, tokenizer, reload_base)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The command line: `train(argv)`, with a usage error as one `error:` line and exit status 1."""
    try:
        train(argv)
    except UsageError as e:
        exit_with(e)
    except Preempted as e:  # SIGTERM (exit status PREEMPTED_EXIT_CODE) or Ctrl-C (130), after a checkpoint
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"train.py: {e}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:  # Ctrl-C outside the training steps (loading, tokenizing, the final save)
        if int(os.environ.get("RANK", "0")) != 0:
            raise SystemExit(INTERRUPTED_EXIT_CODE) from None
        exit_interrupted("train.py was not in a training step, so no checkpoint was saved now; what --output_dir "
                         "held before is kept. Run the same command again to resume from its last complete "
                         "checkpoint (or to start, if it has none).")


if __name__ == "__main__":
    main()
