"""What makes a checkpoint this run's: the model and data it trains from, and the settings that change its result.

    run = {**run_identity(model, gguf_file, records.key(), data_path), "settings": run_settings(m, d, t)}
    check_settings("out/checkpoint-200", recorded["settings"], run["settings"])   # raises ResumeError

train.py records `run` in each checkpoint's manifest (alpaca_lib/training/checkpoints.py) and in the finished
mark; alpaca_lib/training/start.py compares what was recorded with this run before the model loads. A resume
with another model, other data or another result-changing setting is refused with each difference listed;
the one change let through is a longer run under a constant learning rate (`check_settings`).

Nothing here imports torch or transformers.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Tuple

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.modeling import model_folder_digest

logger = logging.getLogger(__name__)


class ResumeError(UsageError):
    """A resume that cannot go ahead as asked; the message says why and what to do."""


# ---- the model and the data ----


def run_identity(model: str, gguf_file: Optional[str], data_key: str, data_name: str) -> dict:
    """What a run trains from, recorded in each checkpoint so that a resume cannot mix two runs.

    Args:
        model: --model_name_or_path: a local folder is known by `model_folder_digest` (config.json and the
            weight files' names, sizes and times), so a copy that keeps the times is the same model; a hub
            id by its id.
        gguf_file: --gguf_file.
        data_key: a digest of the training data (`DataSource.key()`: its bytes, split and column mapping).
        data_name: how the data was named (--data_path), for the message only.
    """
    folder = Path(model).expanduser()
    content = "folder:" + model_folder_digest(folder) if folder.is_dir() else model
    return {"model": model, "model_content": content, "gguf_file": gguf_file, "data": data_name,
            "data_sha256": data_key}


def other_run(recorded: Optional[dict], identity: Optional[dict]) -> Optional[str]:
    """How the run `recorded` differs from `identity` in model or data, or None if it does not (or is unknown)."""
    if not identity or not recorded:
        return None
    differs = []
    if (recorded.get("model_content"), recorded.get("gguf_file")) != (identity["model_content"], identity["gguf_file"]):
        differs.append(f"base model {recorded.get('model')} {recorded.get('gguf_file') or ''}then, "
                       f"{identity['model']} {identity['gguf_file'] or ''}now")
    if recorded.get("data_sha256") != identity["data_sha256"]:
        differs.append(f"training data {recorded.get('data')} (sha256 {str(recorded.get('data_sha256'))[:12]}) then, "
                       f"{identity['data']} (sha256 {identity['data_sha256'][:12]}) now")
    return "; ".join(differs) or None


# ---- the settings a resume must keep ----

# (flag, where it lives: m(odel), d(ata) or t(raining) arguments) for each setting that changes what training
# computes. A resume with another value would continue one run with another's state (a scheduler laid out
# for the old learning rate, a data position counted in other batches, an optimizer state of other shapes).
# The run's length (--max_steps / --num_train_epochs) and the effective batch are compared on their own.
# Everything else (logging, saving, evaluation cadence, report_to, workers) may change on a resume.
RESULT_SETTINGS = (
    ("learning_rate", "t"), ("lr_scheduler_type", "t"), ("lr_scheduler_kwargs", "t"), ("warmup_steps", "t"),
    ("optim", "t"), ("optim_args", "t"), ("adam_beta1", "t"), ("adam_beta2", "t"), ("adam_epsilon", "t"),
    ("weight_decay", "t"), ("max_grad_norm", "t"), ("label_smoothing_factor", "t"), ("neftune_noise_alpha", "t"),
    ("seed", "t"), ("data_seed", "t"), ("packing", "t"), ("train_sampling_strategy", "t"),
    ("model_max_length", "t"), ("drop_truncated_responses", "d"), ("drop_empty_or_duplicate_records", "d"),
    ("val_set_size", "d"), ("lora_r", "m"), ("lora_alpha", "m"), ("lora_dropout", "m"),
    ("lora_target_modules", "m"), ("load_in_4bit", "m"), ("torch_dtype", "m"), ("bf16", "t"), ("fp16", "t"),
    # The prompt format: the name, the system turn, and a template file's SHA-256 (DataArguments computes it).
    ("prompt_template", "d"), ("system_prompt", "d"), ("prompt_template_sha256", "d"),
)
_FLAG_NAMES = {"train_sampling_strategy": "--group_by_length / --train_sampling_strategy",
               "warmup_steps": "--warmup_steps / --warmup_ratio",
               "prompt_template_sha256": "--prompt_template file's SHA-256"}
# Schedules whose learning rate at a step does not depend on the run's length: only these can be extended.
_LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup")


def plain_value(value):
    """`value` as JSON-like data: enums by their value, containers item by item, any other object as its str."""
    value = getattr(value, "value", value)  # enums (scheduler type, strategies) by their value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return str(value)


def run_settings(model_args, data_args, training_args) -> dict:
    """The settings of a run that change its result, recorded in each checkpoint's manifest (see `RESULT_SETTINGS`).

    Args:
        model_args, data_args, training_args: train.py's parsed flags.
    Returns:
        A JSON-able dict: each setting by flag name, `effective_batch` as [per-device batch, gradient
        accumulation, processes], `max_steps` and `num_train_epochs`.
    """
    where = {"m": model_args, "d": data_args, "t": training_args}
    settings = {name: plain_value(getattr(where[holder], name, None)) for name, holder in RESULT_SETTINGS}
    settings["system_prompt"] = settings["system_prompt"] or None  # --system_prompt "" is no system prompt
    t = training_args
    settings["effective_batch"] = [t.per_device_train_batch_size, t.gradient_accumulation_steps, t.world_size]
    settings["max_steps"] = t.max_steps
    settings["num_train_epochs"] = t.num_train_epochs
    return settings


def _length(settings: dict) -> Tuple[str, float]:
    if settings.get("max_steps", -1) > 0:
        return "max_steps", settings["max_steps"]
    return "num_train_epochs", settings.get("num_train_epochs")


def _batch(settings: dict) -> str:
    per_device, accumulation, processes = settings["effective_batch"]
    return f"{per_device * accumulation * processes} ({per_device} x {accumulation} x {processes})"


def changed_settings(old: Optional[dict], new: Optional[dict]) -> List[Tuple[str, object, object]]:
    """(flag, old value, new value) for each result-changing setting that differs, the run's length last.

    A setting that `old` does not record (a checkpoint of an earlier version) is not compared.
    """
    if not old or not new:
        return []
    changes = []
    # A template file is the same by its bytes: moved, or named another way (./t.json for t.json), it trains alike.
    same_file = bool(old.get("prompt_template_sha256")) and old["prompt_template_sha256"] == new.get(
        "prompt_template_sha256")
    for name, _ in RESULT_SETTINGS:
        if name == "prompt_template" and same_file:
            continue
        if name in old and old[name] != new.get(name):
            changes.append((_FLAG_NAMES.get(name, f"--{name}"), old[name], new.get(name)))
    if "effective_batch" in old:
        before, after = old["effective_batch"], new["effective_batch"]
        if before[0] * before[1] * before[2] != after[0] * after[1] * after[2]:
            changes.append(("effective batch (--per_device_train_batch_size x --gradient_accumulation_steps x "
                            "processes)", _batch(old), _batch(new)))
    if "max_steps" in old and _length(old) != _length(new):
        (old_flag, old_value), (new_flag, new_value) = _length(old), _length(new)
        if old_flag == new_flag:
            changes.append((f"--{old_flag}", old_value, new_value))
        else:
            changes.append(("length", f"--{old_flag} {old_value}", f"--{new_flag} {new_value}"))
    return changes


def _extension(changes, old: dict, new: dict) -> Optional[str]:
    """If the only change makes the run longer and the steps taken do not depend on its length (a constant
    learning rate, warmup counted in steps), what continuing does; None otherwise."""
    if len(changes) != 1 or changes[0][0] not in ("--max_steps", "--num_train_epochs"):
        return None
    flag, before, after = changes[0]
    warmup = new.get("warmup_steps") or 0
    if after <= before or new.get("lr_scheduler_type") not in _LENGTH_FREE_SCHEDULES or 0 < warmup < 1:
        return None
    return (f"extending the run from {flag} {before} to {after}: with a constant learning rate the steps already "
            f"taken are those of a run of {flag} {after}, so it ends as that run would")


def _refusal(where: str, changes, old: dict, new: dict, explicit: bool) -> ResumeError:
    listed = "; ".join(f"{flag} {before} -> {after}" for flag, before, after in changes)
    length = [c for c in changes if c[0] in ("--max_steps", "--num_train_epochs", "length")]
    note = ""
    if length:
        note = (f" (the run's length cannot change here: the {old.get('lr_scheduler_type')} learning-rate schedule "
                "and warmup are laid out over the whole run, so the steps already taken belong to a run of the old "
                "length; a run can be extended only with --lr_scheduler_type constant and warmup given in steps, and "
                "then only by changing its length alone)")
    fresh = ("drop --resume_from_checkpoint to start afresh with the new ones (with --overwrite_output_dir True "
             "if --output_dir holds checkpoints)") if explicit else (
        "pass --overwrite_output_dir True to start afresh with the new ones (it deletes the checkpoints and the "
        "final model's marker)")
    return ResumeError(
        f"{where} was trained with other settings, and resuming would mix the two runs: {listed}{note}. "
        f"Fix: run with the old settings to resume, or {fresh}."
    )


def check_settings(where: str, old: Optional[dict], new: Optional[dict], explicit: bool = False) -> List[tuple]:
    """Raises `ResumeError` listing each changed setting, unless the only change is a sound extension.

    Args:
        where: what recorded `old` (a checkpoint folder, the finished run), named in the message.
        old, new: `run_settings` then (as recorded) and now.
        explicit: the checkpoint was named by --resume_from_checkpoint (the message's fix differs).
    Returns:
        The changes allowed (an extension), or [].
    """
    changes = changed_settings(old, new)
    if not changes:
        return []
    extension = _extension(changes, old, new)
    if extension is None:
        raise _refusal(where, changes, old, new, explicit)
    logger.info("%s", extension)
    return changes
