"""train.py's command line: the flag dataclasses and every check of their values, in one place.

    python train.py --help

`parse_flags` turns the command line into (ModelArguments, DataArguments, TrainingArguments); on the way,
`TrainingArguments.__post_init__` maps the original commands' flags that transformers 5 renamed or removed
and adapts to the hardware. `check_flags` then checks what needs no model: values out of range, flags that
do not work together, the model source and the output folder. Each mistake is a one-line `FlagError` (or
`DataError`, `UsageError`) that says what to change; nothing is created before all of them pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import transformers
from transformers.hf_argparser import string_to_bool

from alpaca_lib.core.config_file import expand_config
from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import jload
from alpaca_lib.core.precision import decide, emulation_warning
from alpaca_lib.core.preflight import (
    check_model_source,
    check_not_an_input,
    check_output_dir,
    check_report_to,
    unknown_flags_error,
)
from alpaca_lib.data.cache import default_cache_dir
from alpaca_lib.data.formats import PromptFormat, load_prompt_format
from alpaca_lib.data.records import DataError
from alpaca_lib.training.lora import DEFAULT_TARGET_MODULES, check_qlora_available
from alpaca_lib.training.packed_attention import PACKED_ATTENTION_CHOICES

__all__ = ["FlagError", "ModelArguments", "DataArguments", "TrainingArguments", "parse_flags", "check_flags"]


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
    drop_truncated_responses: bool = field(default=False, metadata={
        "help": "Leave out examples whose response is cut at --model_max_length (their EOS is lost); "
                "the original trains on them. Applies to --eval_data_path too."},
    )
    drop_empty_or_duplicate_records: bool = field(default=False, metadata={
        "help": "Leave out records with an empty output or a blank instruction, and exact repeats of an "
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
    prompt_template: str = field(default="alpaca", metadata={"help": (
        "How records become text: alpaca (Stanford Alpaca's prompt, the original recipe); chat (the model's own chat "
        "template: an Alpaca record is one user and one assistant turn, a conversation record keeps its turns, the "
        "loss is on every assistant turn); or a JSON template file with prompt_input, prompt_no_input and "
        "response_split. Recorded in --output_dir/prompt_format.json.")})
    system_prompt: Optional[str] = field(default=None, metadata={"help": (
        "With --prompt_template chat: a system turn for every conversation that has none (default: none, so the "
        "chat template's own default applies, if it has one).")})

    def prompt_format(self) -> PromptFormat:
        """--prompt_template and --system_prompt, read and checked once (`load_prompt_format`; PromptFormatError)."""
        key = (self.prompt_template, self.system_prompt)  # one read of a template file: checks, SHA-256, data agree
        if self.__dict__.get("_prompt_format", (None,))[0] != key:
            self.__dict__["_prompt_format"] = (key, load_prompt_format(*key))
        return self.__dict__["_prompt_format"][1]

    @property
    def prompt_template_sha256(self) -> str:
        """The template file's SHA-256 ("" for alpaca and chat): a resume after the file was edited is refused."""
        return self.prompt_format().digest


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
    # A string on the command line so that it can say "auto"; __post_init__ turns it into the bool the Trainer reads.
    bf16: str = field(
        default="False",
        metadata={"help": "bf16 mixed precision: True, False, or auto (bf16 where this device runs it natively: a "
                          "CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX; float32 elsewhere, where bf16 is "
                          "emulated and many times slower). The choice and its reason are logged.",
                  "nargs": "?", "const": "True"},
    )
    packed_attention: str = field(
        default="auto",
        metadata={"help": "Attention of packed rows: auto (on CUDA torch's variable-length flash-attention if a probe "
                          "passes, else flash-attn's if installed, else sdpa over a block-diagonal mask; on CPU sdpa "
                          "per example), or one of varlen, flash, sdpa, per_example to force it."},
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
            config = read_fsdp_config(self.fsdp_config)
            classes = [c.strip() for c in self.fsdp_transformer_layer_cls_to_wrap.split(",") if c.strip()]
            config.setdefault("transformer_layer_cls_to_wrap", classes)
            self.fsdp_config = config
        if isinstance(self.fsdp, str):
            self.fsdp, self.fsdp_config = fsdp_string_to_config(self.fsdp, self.fsdp_config)
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
        other = not self.use_cpu and not has_cuda and _has_other_accelerator()
        self._choose_precision("cuda" if has_cuda and not self.use_cpu else None if other else "cpu")
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

    def _choose_precision(self, device: Optional[str]) -> None:
        """Turns --bf16 into a bool: "auto" by what `device` runs natively, logged in one line; an explicit
        half precision that this device emulates (or, on a CPU, ignores) is kept, with one warning line."""
        asked = self.bf16
        if isinstance(asked, str) and asked.strip().lower() == "auto":
            asked = "auto"
        elif isinstance(asked, str):
            try:
                asked = string_to_bool(asked.strip())  # the words HfArgumentParser takes for a bool flag
            except ArgumentTypeError:
                raise FlagError(f"--bf16 {asked} is not a choice: give True, False or auto.") from None
        if device is None:  # another accelerator (XPU, MPS, NPU, ...): its own checks in transformers decide
            self.bf16 = True if asked == "auto" else asked
            return
        if asked == "auto":
            decision = decide("bfloat16", device)
            self.bf16 = decision.native and not self.fp16
            if self.fp16:
                reason = "--fp16 True was given"
            else:
                reason = (f"this {device.upper()} runs bf16 natively" if decision.native
                          else f"this {device.upper()} only emulates bf16") + f" {decision.evidence}"
            _rank0_note(f"train.py: --bf16 auto: {'bf16 mixed precision' if self.bf16 else 'float32'}, "
                        f"since {reason}.")
            return
        self.bf16 = asked
        if self.bf16:
            warning = emulation_warning("bfloat16", "--bf16 True", "--bf16 auto (or False) trains in float32 here",
                                        device)
            if warning:
                _rank0_note(f"train.py: {warning}")
        if self.fp16 and device == "cpu":
            _rank0_note("train.py: warning: --fp16 True on a CPU is not used: accelerate runs fp16 mixed precision on "
                        "GPUs only, so this run trains in float32, as with --fp16 False; --bf16 auto trains in bf16 "
                        "where this CPU runs it natively.")


def _rank0_note(message: str) -> None:
    """One line to stderr from the first process only (every rank parses the same flags)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr, flush=True)


# The original's `--fsdp "full_shard auto_wrap"` words, as FSDP2 settings in fsdp_config (transformers 5's
# own translation of the string warns that it goes away, and will go). auto_wrap is FSDP2's default policy.
_FSDP2_WORDS = {"full_shard": ("reshard_after_forward", True), "shard_grad_op": ("reshard_after_forward", False),
                "offload": ("cpu_offload", True), "auto_wrap": None}


def read_fsdp_config(fsdp_config) -> dict:
    """--fsdp_config as a dict: None is {}, a string is JSON text (starting with "{") or a JSON file's path."""
    if fsdp_config is None:
        return {}
    if isinstance(fsdp_config, str):
        if fsdp_config.lstrip().startswith("{"):
            return json.loads(fsdp_config)
        return jload(fsdp_config)
    return fsdp_config


def fsdp_string_to_config(fsdp: str, fsdp_config):
    """(True, fsdp_config with the string's options) for an --fsdp string of FSDP2 words; else both unchanged.

    Args:
        fsdp: the --fsdp value, e.g. "full_shard auto_wrap" or "full_shard auto_wrap offload".
        fsdp_config: None, a dict, or a JSON file or string (as --fsdp_config takes it).
    Returns:
        (fsdp, fsdp_config) to use. Strings with other words (hybrid_shard, ...) or an FSDP1 config
        (version 1) are left to transformers as they are.
    """
    words = fsdp.split()
    config = dict(read_fsdp_config(fsdp_config))
    if not words or any(w not in _FSDP2_WORDS for w in words) or int(config.get("version", 2)) != 2:
        return fsdp, fsdp_config
    for word in words:
        if _FSDP2_WORDS[word] is not None:
            key, value = _FSDP2_WORDS[word]
            config.setdefault(key, value)
    return True, config


def _has_other_accelerator() -> bool:
    for name in ("xpu", "mps", "npu", "mlu", "musa", "hpu"):
        backend = getattr(torch, name, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            return True
    return False


def _rank0_warning(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        warnings.warn(message, stacklevel=3)


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
    # --config FILE: the file's flags go first, so the ones typed after them win (alpaca_lib/core/config_file.py).
    argv = expand_config(sys.argv[1:] if argv is None else argv,
                         ["--" + f.name for t in types for f in dataclasses.fields(t)], "train.py")
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
    if training_args.packed_attention not in PACKED_ATTENTION_CHOICES:
        raise FlagError(f"--packed_attention {training_args.packed_attention!r} is not one of: "
                        f"{', '.join(PACKED_ATTENTION_CHOICES)}.")
    if training_args.packed_attention != "auto" and not training_args.packing:
        raise FlagError(f"--packed_attention {training_args.packed_attention} applies to packed rows only; add "
                        "--packing True, or drop --packed_attention.")
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


def check_flags(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Checks everything about the flags that needs no model, so that a mistake stops the run before minutes
    go into loading it; creates nothing.

    Raises:
        DataError: no --data_path.
        FlagError: a value out of range, or flags that do not work together.
        PromptFormatError: a --prompt_template that cannot be used (a chat template: once the tokenizer loads).
        UsageError: a model source or output folder that cannot work, an unknown --report_to, or QLoRA
            without its packages.
    """
    if data_args.data_path is None:
        raise DataError("--data_path is required: an Alpaca JSON or JSON Lines file, a .parquet or .csv file, a "
                        "save_to_disk folder, or a Hugging Face dataset id.")
    _check_flags(model_args, data_args, training_args)
    data_args.prompt_format()  # an unknown --prompt_template, a bad template file, --system_prompt without chat
    _check_paths(model_args, training_args)
    check_report_to(training_args.report_to or [])
    if model_args.load_in_4bit:
        check_qlora_available()
