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
are mapped to their current spelling in `TrainingArguments.__post_init__`.

Beyond the original recipe, all opt-in (the defaults train exactly as above):
    --group_by_length True      batches of similar length: less padding, same examples per step
    --packing True              padding-free rows of up to --model_max_length tokens (alpaca_lib/packing.py)
    --lora_r 8 [--lora_alpha 16 --lora_dropout 0.05 --lora_target_modules q_proj,v_proj] [--load_in_4bit True]
                                LoRA adapters (alpaca_lib/lora.py): output_dir/adapter + merged model in output_dir
    --eval_data_path F | --val_set_size N   evaluation set, with --evaluation_strategy steps --eval_steps K

Killed? Run the same command again: it resumes from the newest complete checkpoint in --output_dir
(alpaca_lib/checkpoints.py); --overwrite_output_dir True starts afresh. SIGTERM saves a checkpoint first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import transformers
from torch.utils.data import Dataset
from transformers.integrations import is_deepspeed_zero3_enabled

from alpaca_lib.checkpoints import (
    PREEMPTED_EXIT_CODE,
    ResumableTrainer,
    StopOnSigterm,
    clear_finished,
    delete_checkpoints,
    final_save_kept,
    mark_finished,
    plan_start,
    run_identity,
    run_settings,
)
from alpaca_lib.data import (
    DataError,
    DataSource,
    DropOptions,
    EncodedData,
    default_cache_dir,
    encode_file,
    encode_pairs,
    labels_for,
    open_source,
)
from alpaca_lib.errors import UsageError, exit_with
from alpaca_lib.fileio import disk_full_as_error
from alpaca_lib.locking import job_lock
from alpaca_lib.lora import (
    ADAPTER_SUBDIR,
    DEFAULT_TARGET_MODULES,
    add_lora,
    check_qlora_available,
    quantization_config,
    save_adapter_and_merged,
)
from alpaca_lib.modeling import (
    DEFAULT_BOS_TOKEN,
    DEFAULT_EOS_TOKEN,
    DEFAULT_PAD_TOKEN,
    DEFAULT_UNK_TOKEN,
    IGNORE_INDEX,
    missing_special_tokens,
    smart_tokenizer_and_embedding_resize,
)
from alpaca_lib.packing import DataCollatorForPackedRows, PackedDataset, packing_mode
from alpaca_lib.preflight import (
    check_model_source,
    check_not_an_input,
    check_output_dir,
    check_report_to,
    unknown_flags_error,
)
from alpaca_lib.saving import save_final
from alpaca_lib.split import hold_out
from utils import PROMPT_DICT

__all__ = [
    "PROMPT_DICT", "IGNORE_INDEX", "DEFAULT_PAD_TOKEN", "DEFAULT_EOS_TOKEN", "DEFAULT_BOS_TOKEN",
    "DEFAULT_UNK_TOKEN", "ModelArguments", "DataArguments", "TrainingArguments",
    "smart_tokenizer_and_embedding_resize", "preprocess", "SupervisedDataset",
    "DataCollatorForSupervisedDataset", "make_supervised_data_module", "train", "FlagError", "Preempted",
    "ADAPTER_SUBDIR",
]

logger = logging.getLogger("train")


class FlagError(UsageError):
    """Command-line flags that are out of range or do not work together; the message says which and what to do."""


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(default="facebook/opt-125m")
    gguf_file: Optional[str] = field(
        default=None, metadata={"help": "A GGUF file inside --model_name_or_path to load (dequantized) as the base."}
    )
    torch_dtype: str = field(
        default="float32",
        metadata={"help": "dtype of the loaded weights. float32 keeps fp32 master weights under --bf16 autocast, "
                          "as the original recipe did; 'auto' uses the checkpoint's own dtype."},
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights (the original recipe)."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (updates are scaled by alpha/r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA adapters' input."})
    lora_target_modules: str = field(
        default=DEFAULT_TARGET_MODULES,
        metadata={"help": "Comma-separated names of the linear layers to adapt, or 'all-linear'."},
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: load the base in 4-bit NF4 (needs --lora_r, a CUDA GPU and bitsandbytes)."},
    )


@dataclass
class DataArguments:
    data_path: str = field(
        default=None,
        metadata={"help": "Training data: an Alpaca JSON list or JSON Lines file, a .parquet or .csv file, a folder "
                          "written by datasets' save_to_disk, or a Hugging Face dataset id."},
    )
    data_split: str = field(default="train", metadata={"help": "Split of a hub dataset or a saved DatasetDict."})
    data_columns: Optional[str] = field(
        default=None,
        metadata={"help": "Map other column names onto Alpaca's, e.g. instruction=instruction,input=context,"
                          "output=response (databricks-dolly-15k)."},
    )
    drop_truncated_responses: bool = field(
        default=False,
        metadata={"help": "Leave out examples whose response is cut at --model_max_length (their EOS is lost); "
                          "the original trains on them. Applies to --eval_data_path too."},
    )
    drop_empty_or_duplicate_records: bool = field(
        default=False,
        metadata={"help": "Leave out records with an empty output or a blank instruction, and exact repeats of an "
                          "earlier record; the original trains on them (they are counted in the log either way). "
                          "Applies to --eval_data_path too."},
    )
    preprocessing_cache_dir: Optional[str] = field(
        default=str(default_cache_dir()),
        metadata={"help": "Folder for tokenized data, keyed by data file, tokenizer and max length; '' disables it."},
    )
    eval_data_path: Optional[str] = field(
        default=None, metadata={"help": "Evaluation data (any source --data_path takes, same --data_split and "
                                        "--data_columns), scored with the same masking."}
    )
    val_set_size: int = field(
        default=0, metadata={"help": "Hold this many examples of --data_path out for evaluation (seeded by --seed)."}
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: Optional[str] = field(default=None)
    optim: str = field(default="adamw_torch")
    model_max_length: int = field(
        default=512,
        metadata={"help": "Maximum sequence length. Sequences will be right padded (and possibly truncated)."},
    )
    # Names of the original commands that transformers 5 renamed or removed; mapped in __post_init__.
    evaluation_strategy: Optional[str] = field(default=None, metadata={"help": "Old name of --eval_strategy."})
    warmup_ratio: Optional[float] = field(
        default=None, metadata={"help": "Fraction of steps for linear warmup (old flag; now --warmup_steps < 1)."}
    )
    fsdp_transformer_layer_cls_to_wrap: Optional[str] = field(
        default=None,
        metadata={"help": "Old flag: decoder layer class(es) to wrap, e.g. 'LlamaDecoderLayer' (comma-separated); "
                          "now fsdp_config['transformer_layer_cls_to_wrap']."},
    )
    group_by_length: bool = field(
        default=False, metadata={"help": "Old flag: batch examples of similar length (--train_sampling_strategy group_by_length)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh even if --output_dir holds checkpoints of an earlier run (they are deleted). "
                          "Without it, a run whose --output_dir has a complete checkpoint resumes from the newest."},
    )
    packing: bool = field(
        default=False,
        metadata={"help": "Pack several examples into each row of up to --model_max_length tokens, without padding "
                          "and without attention across examples; a batch is --per_device_train_batch_size rows."},
    )

    def __post_init__(self):
        self._map_legacy_flags()
        self._adapt_to_hardware()
        super().__post_init__()

    def _map_legacy_flags(self) -> None:
        if self.evaluation_strategy is not None:
            current = str(getattr(self.eval_strategy, "value", self.eval_strategy))
            if current not in ("no", str(self.evaluation_strategy)):
                raise FlagError(
                    f"--evaluation_strategy {self.evaluation_strategy} conflicts with --eval_strategy {current}; "
                    "give only one of them."
                )
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise FlagError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
            if self.warmup_steps not in (0, None):
                raise FlagError("--warmup_ratio and --warmup_steps both given; keep one of them.")
            # transformers 5 reads a float below 1 in warmup_steps as a ratio of the total steps.
            self.warmup_steps = self.warmup_ratio
        if self.fsdp_transformer_layer_cls_to_wrap:
            config = self.fsdp_config
            if config is None:
                config = {}
            elif isinstance(config, str):
                if config.lstrip().startswith("{"):
                    config = json.loads(config)
                else:
                    with open(config, encoding="utf-8") as f:
                        config = json.load(f)
            classes = [c.strip() for c in self.fsdp_transformer_layer_cls_to_wrap.split(",") if c.strip()]
            config.setdefault("transformer_layer_cls_to_wrap", classes)
            self.fsdp_config = config
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"
        if self.packing and self.train_sampling_strategy == "group_by_length":
            raise FlagError(
                "--packing True and --group_by_length True (--train_sampling_strategy group_by_length) both given; "
                "packed rows are already full, so keep only one of them."
            )

    def _adapt_to_hardware(self) -> None:
        has_cuda = torch.cuda.is_available()
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if not has_cuda and not self.use_cpu and not _has_other_accelerator() and not self.deepspeed:
            # No accelerator: the Trainer wants --use_cpu for bf16, and under torchrun without it each
            # rank would silently train alone on all the data.
            self.use_cpu = True
            if world_size > 1:
                _rank0_warning(
                    f"train.py: launched with {world_size} processes and no GPU: training distributed on CPU "
                    "(gloo backend, as with --use_cpu True)."
                )
        if self.tf32 and not has_cuda:
            _rank0_warning("train.py: --tf32 needs an Ampere or newer NVIDIA GPU; none here, so it is ignored.")
            self.tf32 = None
        if self.fsdp and not has_cuda and not _has_other_accelerator():
            _rank0_warning(
                "train.py: --fsdp needs a GPU; on CPU, accelerate runs plain data parallelism instead of sharding."
            )
        if self.deepspeed and not has_cuda and not _has_other_accelerator():
            _rank0_warning(
                "train.py: --deepspeed needs a GPU; accelerate sets up no CPU process group for DeepSpeed, so "
                "without one the run is expected to fail. Drop --deepspeed to train with DDP on CPU."
            )


def _has_other_accelerator() -> bool:
    for name in ("xpu", "mps", "npu", "mlu", "musa", "hpu"):
        backend = getattr(torch, name, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            return True
    return False


def _rank0_warning(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        warnings.warn(message, stacklevel=3)


def preprocess(sources: Sequence[str], targets: Sequence[str], tokenizer: transformers.PreTrainedTokenizer) -> Dict:
    """Tokenizes `source + target` with the source masked: the original function, computed in batches.

    Returns:
        dict(input_ids=[LongTensor], labels=[LongTensor]) with one entry per example, none dropped.
    """
    example_ids, source_lens, _ = encode_pairs(list(sources), list(targets), tokenizer, tokenizer.model_max_length)
    input_ids = [torch.tensor(ids, dtype=torch.long) for ids in example_ids]
    labels = [torch.from_numpy(labels_for(ids.numpy(), n)) for ids, n in zip(input_ids, source_lens)]
    return dict(input_ids=input_ids, labels=labels)


class SupervisedDataset(Dataset):
    """Dataset for supervised fine-tuning: tokenized examples with the prompt masked in the labels."""

    def __init__(
        self,
        data_path: str,
        tokenizer: transformers.PreTrainedTokenizer,
        cache_dir: Optional[str] = None,
        records: Optional[Sequence[dict] | DataSource] = None,
        encoded: Optional[EncodedData] = None,
        drop: DropOptions = DropOptions(),
    ):
        super().__init__()
        if encoded is None:
            # `records`: the checked records, or the checked `DataSource` of data_path (read in batches).
            source = records if isinstance(records, DataSource) else data_path
            encoded = encode_file(source, tokenizer, tokenizer.model_max_length, cache_dir,
                                  None if isinstance(records, DataSource) else records, drop)
        self.encoded: EncodedData = encoded
        stats = self.encoded.stats
        logger.info(
            "%s: %d examples, %d kept, %d tokens (%d in the loss); preprocessing cache: %s",
            data_path, stats["examples"], stats["kept"], stats["tokens"], stats["loss_tokens"], stats["cache"],
        )
        if stats["dropped_no_response"]:
            logger.warning(
                "%s: dropped %d of %d examples whose prompt alone fills model_max_length=%d (no response token "
                "left to learn; first indices %s). Raise --model_max_length to keep them.",
                data_path, stats["dropped_no_response"], stats["examples"], tokenizer.model_max_length,
                stats["dropped_indices"],
            )
        if stats["boundary_merges"]:
            logger.warning(
                "%s: in %d examples the tokenizer merges tokens across the prompt/response boundary (the tokenized "
                "prompt is not a prefix of the tokenized example); the masked length is still the prompt's token "
                "count, as in the original.", data_path, stats["boundary_merges"],
            )
        _log_data_quality(data_path, stats, tokenizer.model_max_length)
        if len(self.encoded) == 0:
            raise DataError(f"{data_path}: no example has a response token left after truncation.")

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i) -> Dict[str, torch.Tensor]:
        ids, source_len = self.encoded.example(i)
        ids = ids.astype(np.int64)
        return dict(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(labels_for(ids, source_len)))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.encoded.offsets)


def _log_data_quality(data_path, stats: Dict, max_length: int) -> None:
    """Warns about examples that train to little: truncated responses, empty outputs, blank instructions, repeats."""
    if stats.get("response_truncated"):
        dropped = stats.get("dropped_truncated", 0)
        logger.warning(
            "%s: %d examples have their response cut at model_max_length=%d (the EOS is lost, so they teach the "
            "model not to stop); %s", data_path, stats["response_truncated"], max_length,
            f"dropped {dropped} of them (--drop_truncated_responses)." if dropped else
            "trained on as in the original. --drop_truncated_responses True leaves them out.",
        )
    useless = {k: stats.get(k, 0) for k in ("empty_outputs", "blank_instructions", "duplicates")}
    if any(useless.values()):
        dropped = stats.get("dropped_empty_or_duplicate", 0)
        logger.warning(
            "%s: %d records with an empty output, %d with a blank instruction, %d exact repeats of an earlier "
            "record; %s", data_path, useless["empty_outputs"], useless["blank_instructions"], useless["duplicates"],
            f"dropped {dropped} (--drop_empty_or_duplicate_records)." if dropped else
            "trained on as in the original. --drop_empty_or_duplicate_records True leaves them out.",
        )


@dataclass
class DataCollatorForSupervisedDataset:
    """Pads a batch to its longest example: pad id for inputs, -100 for labels."""

    tokenizer: transformers.PreTrainedTokenizer

    def __call__(self, instances: Sequence[Dict]) -> Dict[str, torch.Tensor]:
        input_ids, labels = tuple([instance[key] for instance in instances] for key in ("input_ids", "labels"))
        input_ids = torch.nn.utils.rnn.pad_sequence(
            input_ids, batch_first=True, padding_value=self.tokenizer.pad_token_id
        )
        labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
        return dict(
            input_ids=input_ids,
            labels=labels,
            attention_mask=input_ids.ne(self.tokenizer.pad_token_id),
        )


def make_supervised_data_module(
    tokenizer: transformers.PreTrainedTokenizer, data_args, records=None, training_args=None, eval_records=None,
    supervised_logits_only: bool = False,
) -> Dict:
    """Make the training (and evaluation) datasets and the collator for supervised fine-tuning.

    Args:
        tokenizer: the training tokenizer (pad token set).
        data_args: `DataArguments`.
        records: the already loaded records of `data_args.data_path`, or its checked `DataSource`.
        training_args: `TrainingArguments` (for --packing and --seed); None trains as the original.
        eval_records: the same for `data_args.eval_data_path`.
        supervised_logits_only: packed batches ask the model for the logits of loss-bearing positions only
            (`alpaca_lib.packing.supports_supervised_logits`).
    Returns:
        dict(train_dataset, eval_dataset, data_collator) for `transformers.Trainer`.
    """
    cache_dir = data_args.preprocessing_cache_dir or None
    drop = DropOptions(getattr(data_args, "drop_truncated_responses", False),
                       getattr(data_args, "drop_empty_or_duplicate_records", False))
    train_dataset = SupervisedDataset(data_args.data_path, tokenizer, cache_dir=cache_dir, records=records, drop=drop)
    eval_dataset = None
    if getattr(data_args, "val_set_size", 0):
        seed = training_args.seed if training_args is not None else 42
        train_part, eval_part = hold_out(train_dataset.encoded, data_args.val_set_size, seed)
        train_dataset = SupervisedDataset(f"{data_args.data_path} (training part)", tokenizer, encoded=train_part)
        eval_dataset = SupervisedDataset(f"{data_args.data_path} (held out)", tokenizer, encoded=eval_part)
    elif getattr(data_args, "eval_data_path", None):
        eval_dataset = SupervisedDataset(data_args.eval_data_path, tokenizer, cache_dir=cache_dir, records=eval_records,
                                         drop=drop)

    if training_args is not None and training_args.packing:
        packed = PackedDataset(train_dataset, train_dataset.lengths, tokenizer.model_max_length)
        logger.info(
            "packing: %d examples into %d rows of up to %d tokens (%.1f examples and %.1f%% of the capacity used "
            "per row); a batch is %d row(s)", len(train_dataset), len(packed), packed.row_tokens,
            len(train_dataset) / max(1, len(packed)), 100 * packed.fill, training_args.per_device_train_batch_size,
        )
        return dict(train_dataset=packed, eval_dataset=eval_dataset,
                    data_collator=DataCollatorForPackedRows(tokenizer.pad_token_id, supervised_logits_only))
    data_collator = DataCollatorForSupervisedDataset(tokenizer=tokenizer)
    return dict(train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=data_collator)


def safe_save_model_for_hf_trainer(trainer: transformers.Trainer, output_dir: str) -> None:
    """Saves a complete model (gathered from FSDP/DeepSpeed shards) and the tokenizer to `output_dir`.

    The files are written to a staging folder first and moved into place only once all of them are
    there and include the weights (`alpaca_lib.saving`).
    """

    def check(staging):
        names = sorted(os.listdir(staging)) if staging.is_dir() else []
        if not any(n.endswith((".safetensors", ".bin")) and "optim" not in n for n in names):
            raise RuntimeError(
                f"{output_dir}: no model weights were written (only {names}). With DeepSpeed ZeRO-3 set "
                "\"stage3_gather_16bit_weights_on_model_save\": true in the config (configs/ has it)."
            )

    save_final(trainer, output_dir, trainer.save_model, check)


class Preempted(Exception):
    """Training stopped early on SIGTERM, after saving a checkpoint to resume from."""


class _FlagParser(transformers.HfArgumentParser):
    """HfArgumentParser whose mistakes are `FlagError`s: one line, not a traceback or a page of usage."""

    def error(self, message: str):
        raise FlagError(f"{message}. See `python train.py --help`.")


def parse_flags(argv: Optional[Sequence[str]] = None):
    """Parses the command line into (ModelArguments, DataArguments, TrainingArguments).

    Raises:
        FlagError: an unknown flag (with the nearest known one), a value of the wrong type, or flags that
            transformers' own checks refuse.
    """
    types = (ModelArguments, DataArguments, TrainingArguments)
    parser = _FlagParser(types)
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except UsageError:
        raise
    except ValueError as e:  # a check in transformers' TrainingArguments.__post_init__
        raise FlagError(str(e)) from None
    if unknown:
        known = [f"--{f.name}" for t in types for f in dataclasses.fields(t)]
        flags = [a.split("=", 1)[0] for a in unknown if a.startswith("-")] or [f"(value) {unknown[0]}"]
        raise unknown_flags_error(flags, known, "train.py")
    return parsed


def _ranges(model_args: ModelArguments, training_args: TrainingArguments):
    """(flag, value, in range, what is expected) for the numeric flags whose wrong values would fail only
    after the model has loaded, or silently train nothing."""
    t, m = training_args, model_args
    return [
        ("--per_device_train_batch_size", t.per_device_train_batch_size, t.per_device_train_batch_size >= 1, ">= 1"),
        ("--per_device_eval_batch_size", t.per_device_eval_batch_size, t.per_device_eval_batch_size >= 1, ">= 1"),
        ("--gradient_accumulation_steps", t.gradient_accumulation_steps, t.gradient_accumulation_steps >= 1, ">= 1"),
        ("--model_max_length", t.model_max_length, t.model_max_length >= 2,
         ">= 2 tokens (room for a prompt token and a response token)"),
        ("--learning_rate", t.learning_rate, t.learning_rate > 0, "> 0"),
        ("--weight_decay", t.weight_decay, t.weight_decay >= 0, ">= 0"),
        ("--warmup_steps", t.warmup_steps, t.warmup_steps >= 0, ">= 0 (steps, or a ratio below 1)"),
        ("--logging_steps", t.logging_steps, t.logging_steps > 0, "> 0"),
        ("--save_steps", t.save_steps, t.save_steps > 0, "> 0"),
        ("--max_steps", t.max_steps, t.max_steps >= 1 or t.max_steps == -1,
         ">= 1, or -1 (the default) to train for --num_train_epochs"),
        ("--num_train_epochs", t.num_train_epochs, t.num_train_epochs > 0 or t.max_steps >= 1, "> 0 (or set --max_steps)"),
        ("--lora_alpha", m.lora_alpha, m.lora_alpha > 0, "> 0"),
        ("--lora_dropout", m.lora_dropout, 0 <= m.lora_dropout < 1, "a probability in [0, 1)"),
    ]


def _check_flags(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> None:
    for flag, value, in_range, expected in _ranges(model_args, training_args):
        if not in_range:
            raise FlagError(f"{flag} {value} is out of range: expected {expected}.")
    if data_args.eval_data_path and data_args.val_set_size:
        raise FlagError("--eval_data_path and --val_set_size both given; evaluate on one of them.")
    if data_args.val_set_size < 0:
        raise FlagError(f"--val_set_size must be a number of examples >= 0, got {data_args.val_set_size}.")
    eval_strategy = str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy))
    if eval_strategy != "no" and not (data_args.eval_data_path or data_args.val_set_size):
        raise FlagError(
            f"--evaluation_strategy {eval_strategy} needs evaluation data: pass --eval_data_path FILE or "
            "--val_set_size N (examples held out of --data_path)."
        )
    if model_args.lora_r < 0:
        raise FlagError(f"--lora_r must be 0 (full fine-tuning) or a positive rank, got {model_args.lora_r}.")
    if model_args.load_in_4bit and not model_args.lora_r:
        raise FlagError("--load_in_4bit trains LoRA adapters on a 4-bit base; give --lora_r too (e.g. --lora_r 16).")
    if model_args.load_in_4bit and model_args.gguf_file:
        raise FlagError("--load_in_4bit and --gguf_file both given; QLoRA quantizes a safetensors base, drop one.")
    if model_args.lora_r and (training_args.fsdp or training_args.deepspeed):
        raise FlagError(
            "--lora_r with --fsdp/--deepspeed: the merged model is built on one process from full weights, which "
            "sharded training does not hold. LoRA needs little memory: train it on one device or with plain DDP "
            "(torchrun without --fsdp/--deepspeed)."
        )


def _check_paths(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    check_model_source(model_args.model_name_or_path, model_args.gguf_file, cache_dir=training_args.cache_dir)
    check_output_dir(training_args.output_dir)
    # The final save writes into --output_dir, and checkpoint rotation or --overwrite_output_dir delete
    # folders in it: the base model may be neither that folder nor inside it.
    check_not_an_input(training_args.output_dir, "--output_dir",
                       {"--model_name_or_path": model_args.model_name_or_path}, replaces_folder=True)


def _load_model_and_tokenizer(model_args: ModelArguments, training_args: TrainingArguments):
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
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
        **extra,
    )
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tokenizer), tokenizer, model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def train(argv: Optional[Sequence[str]] = None) -> transformers.Trainer:
    """Parses the command line, fine-tunes, and saves the model and tokenizer to --output_dir."""
    model_args, data_args, training_args = parse_flags(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # Everything that can be checked without the model is, before minutes go into loading it; nothing is
    # created before these checks pass.
    if data_args.data_path is None:
        raise DataError("--data_path is required: an Alpaca JSON or JSON Lines file, a .parquet or .csv file, a "
                        "save_to_disk folder, or a Hugging Face dataset id.")
    _check_flags(model_args, data_args, training_args)
    _check_paths(model_args, training_args)
    check_report_to(training_args.report_to or [])
    if model_args.load_in_4bit:
        check_qlora_available()
    # Read through once (a batch at a time) so that bad data stops the run here; tokenizing reads it again.
    records = open_source(data_args.data_path, data_args.data_split, data_args.data_columns, "--data_path").check()
    eval_records = open_source(data_args.eval_data_path, data_args.data_split, data_args.data_columns,
                               "--eval_data_path").check() if data_args.eval_data_path else None
    identity = run_identity(model_args.model_name_or_path, model_args.gguf_file, records.key(), data_args.data_path)
    run = {**identity, "settings": run_settings(model_args, data_args, training_args)}
    # One job at a time writes --output_dir (under torchrun, rank 0 holds the lock for all processes).
    with job_lock(training_args.output_dir, "train.py"):
        return _train_locked(model_args, data_args, training_args, records, eval_records, run)


def _train_locked(model_args, data_args, training_args, records, eval_records, run):
    """Trains (or only finishes the final save, or does nothing) once this job holds --output_dir."""
    start = plan_start(training_args.output_dir, training_args.resume_from_checkpoint,
                       training_args.overwrite_output_dir, run)
    if start.finished_step is not None:
        if training_args.process_index == 0:
            print(f"train.py: {training_args.output_dir} already holds the final model of this run (step "
                  f"{start.finished_step}); nothing to train. To train it again from the start, pass "
                  "--overwrite_output_dir True.", file=sys.stderr, flush=True)
        return None
    resume_from = start.checkpoint

    # Seeded before the model loads, so that whatever it initialises (LoRA adapters, resized embeddings)
    # is the same in every run with this --seed: a resumed run then repeats the interrupted one exactly.
    transformers.set_seed(training_args.seed)
    model, tokenizer = _load_model_and_tokenizer(model_args, training_args)
    # The Trainer switches the KV cache off for training (--use_cache); the saved model keeps the loaded setting.
    use_cache = model.config.use_cache
    packing = contextlib.nullcontext(False)
    if training_args.packing:
        # Under DeepSpeed ZeRO-3 each process holds a shard of the weights: no forward can run before the
        # engine gathers them, so the probes are skipped there. On CPU, sdpa per example beats sdpa over
        # the masked square of the row (alpaca_lib/packing.py).
        packing = packing_mode(model, probe=not is_deepspeed_zero3_enabled(),
                               per_example_sdpa=training_args.device.type == "cpu")
    with packing as supervised_logits:  # the model is back to its usual attention and cache afterwards
        if training_args.packing:
            logger.info(
                "packing: the LM head runs on %s", "the loss-bearing positions only (prompt positions skip it)"
                if supervised_logits else f"every position ({type(model).__name__} takes no logits_to_keep mask)",
            )
        trainer, sigterm = _make_trainer(model, tokenizer, model_args, data_args, training_args, records,
                                         eval_records, supervised_logits)
        trainer.run_identity = run
        if training_args.overwrite_output_dir and training_args.should_save:
            delete_checkpoints(training_args.output_dir)
        if training_args.should_save:
            clear_finished(training_args.output_dir)  # the final model there is no longer this run's last word
        trainer.accelerator.wait_for_everyone()
        if start.save_only:
            trainer.load_without_training(resume_from)
        else:
            trainer.train(resume_from_checkpoint=resume_from)
    if sigterm.stopped_at is not None:
        raise Preempted(
            f"stopped by SIGTERM: saved {training_args.output_dir}/checkpoint-{sigterm.stopped_at} at step "
            f"{sigterm.stopped_at}. Run the same command again to resume from it."
        )
    with disk_full_as_error(training_args.output_dir, final_save_kept(training_args.output_dir, trainer.state.global_step)):
        trainer.save_state()
        model.config.use_cache = use_cache
        _save_final_model(trainer, tokenizer, model_args, training_args)
        if training_args.should_save:
            mark_finished(training_args.output_dir, trainer.state.global_step, run)
    return trainer


def _make_trainer(model, tokenizer, model_args, data_args, training_args, records, eval_records,
                  supervised_logits: bool):
    """Adds LoRA adapters when asked, tokenizes the data and builds the Trainer; returns it and its SIGTERM hook."""
    if model_args.lora_r:
        model = add_lora(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                         model_args.lora_target_modules, training_args.gradient_checkpointing)
    # One process per machine tokenizes (and fills the cache); the others then read its result.
    with training_args.main_process_first(local=True, desc="tokenizing the training data"):
        data_module = make_supervised_data_module(
            tokenizer=tokenizer, data_args=data_args, records=records, training_args=training_args,
            eval_records=eval_records, supervised_logits_only=supervised_logits,
        )
    sigterm = StopOnSigterm()
    trainer = ResumableTrainer(model=model, processing_class=tokenizer, args=training_args, callbacks=[sigterm],
                               **data_module)
    logger.info(
        "training with %s over %d process(es) on %s", trainer.accelerator.distributed_type.value,
        training_args.world_size, training_args.device,
    )
    return trainer, sigterm


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


def main() -> None:
    try:
        train()
    except UsageError as e:
        exit_with(e)
    except Preempted as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"train.py: {e}", file=sys.stderr, flush=True)
        raise SystemExit(PREEMPTED_EXIT_CODE) from None


if __name__ == "__main__":
    main()
