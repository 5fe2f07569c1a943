"""Training that survives being killed: complete checkpoints, automatic resume of the same run only.

    python train.py ... --output_dir out --save_strategy steps --save_steps 200
    # killed (OOM, node lost, time limit)? Run the same command again: it resumes from the newest
    # complete checkpoint in out/. --overwrite_output_dir True starts afresh instead.

The files and the decisions; the Trainer's side (saving them, a clean stop on SIGTERM, an order that a
resume reproduces) is alpaca_lib/training/resumable.py. On top of the Trainer's own checkpointing:

- **A checkpoint is complete or it is not used.** Once every process has written its part of
  `checkpoint-N` (weights, optimizer, scheduler, RNG states, trainer state), the main process writes
  `checkpoint-N/checkpoint_manifest.json` listing each file and its size (after syncing them to disk).
  A folder without a manifest was interrupted during its save; a file missing or of another size than the
  manifest says was damaged afterwards (a truncated copy, a full disk). Either way the resume reports it
  by name and takes the previous complete checkpoint. Sizes catch truncation; they do not catch bytes
  changed in place, which would cost a full read of every file to hash.
- **Rotation after completion.** `--save_total_limit` is applied only once the new checkpoint has its
  manifest, and it counts complete checkpoints only, so it never deletes the last complete one. Checkpoints
  of later steps than the one just written (an earlier run's, after a resume from an older one) are not
  counted and not deleted: the run's own newest complete checkpoint always survives.
- **A resume continues the same run or none.** Each manifest records the model, the data and the settings
  that change the result (`run_settings`); `plan_start` refuses a resume with other values, listing each,
  before the model loads. A run whose final model is saved (`training_finished.json`) trains nothing when
  run again; one whose last checkpoint is at its last step only saves the final model from it.

Nothing here imports torch or transformers: commands that only read checkpoints (the judge's leaderboard,
for one) start without them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import atomic_write, fsync_path
from alpaca_lib.core.modeling import model_folder_digest

logger = logging.getLogger(__name__)

MANIFEST_NAME = "checkpoint_manifest.json"
CHECKPOINT_PREFIX = "checkpoint"  # the Trainer's folder names: checkpoint-<global step>
_CHECKPOINT_DIR = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")
# 128 + SIGTERM: what a process killed by SIGTERM reports, so schedulers read the stop as a preemption.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


# ---- complete checkpoints ----


def write_manifest(folder: Path, step: int, run: Optional[dict] = None) -> None:
    """Marks `folder` complete: syncs its files to disk, then writes the list of files and sizes atomically.

    `run` (see `run_identity`) records what the checkpoint was trained from, so that a later resume with
    another model or other data is refused instead of mixing the two runs.
    """
    files: Dict[str, int] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            fsync_path(path)
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    with atomic_write(folder / MANIFEST_NAME) as f:
        json.dump({"step": step, "files": files, **({"run": run} if run else {})}, f, indent=1)
    fsync_path(folder)


def problem_with(folder: Path) -> Optional[str]:
    """Why the checkpoint in `folder` cannot be resumed from, or None when it is complete."""
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return f"it has no {MANIFEST_NAME}: its save did not finish (the run was killed while saving?)"
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"its {MANIFEST_NAME} is damaged ({e})"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes, but {size} were written (truncated or damaged)"
    return None


def list_checkpoints(output_dir: str | os.PathLike) -> List[Tuple[int, Path]]:
    """The `checkpoint-N` folders in `output_dir` as (N, path), oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def newest_complete(output_dir: str | os.PathLike) -> Tuple[Optional[Path], List[Tuple[Path, str]]]:
    """The newest complete checkpoint in `output_dir`, and the newer ones passed over with the reason."""
    skipped = []
    for _, path in reversed(list_checkpoints(output_dir)):
        problem = problem_with(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def rotate(output_dir: str | os.PathLike, keep: Optional[int], protect: Optional[str] = None,
           upto: Optional[int] = None) -> None:
    """Keeps the newest `keep` complete checkpoints (and `protect`, the best one); deletes older folders.

    Only folders older than the newest complete checkpoint are ever deleted, so the last complete one
    survives whatever `keep` says. Newer incomplete folders are left for the run to overwrite.

    Args:
        upto: the step of the checkpoint just written. Folders of later steps are another run's (a run
            resumed from an earlier checkpoint leaves the newer ones where they are): they are neither
            counted nor deleted, until this run writes its own checkpoint at that step in their place.
    """
    if not keep or keep <= 0:
        return
    found = [(step, path) for step, path in list_checkpoints(output_dir) if upto is None or step <= upto]
    complete = [(step, path) for step, path in found if problem_with(path) is None]
    if not complete:
        return
    kept = {path for _, path in complete[-keep:]}
    newest_step = complete[-1][0]
    for step, path in found:
        if step < newest_step and path not in kept and (protect is None or Path(protect) != path):
            logger.info("deleting %s (--save_total_limit %d)", path, keep)
            shutil.rmtree(path, ignore_errors=True)


# ---- which checkpoint a run resumes from ----


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


def _other_run(path: Path, identity: Optional[dict]) -> Optional[str]:
    """How the run that wrote checkpoint `path` differs from `identity`, or None if it does not (or is unknown)."""
    return _other_run_of(_manifest_run(path), identity)


def _other_run_of(recorded: Optional[dict], identity: Optional[dict]) -> Optional[str]:
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


class ResumeError(UsageError):
    """A resume that cannot go ahead as asked; the message says why and what to do."""


def checkpoint_to_resume(output_dir: str, resume_from_checkpoint: Optional[str], overwrite: bool,
                         identity: Optional[dict] = None) -> Optional[str]:
    """Decides where training starts; called before the model loads, so a bad path costs nothing.

    Args:
        output_dir: the run's --output_dir.
        resume_from_checkpoint: --resume_from_checkpoint: None (resume if `output_dir` has a complete
            checkpoint), "True" (the newest complete one, which must exist) or a checkpoint folder.
        overwrite: --overwrite_output_dir: start afresh (the caller deletes the old checkpoints).
        identity: this run's `run_identity`; a checkpoint found in `output_dir` that another model or other
            data wrote is refused (one named by --resume_from_checkpoint is used, with a warning).
    Returns:
        The checkpoint folder to resume from, or None to train from the start.
    Raises:
        ResumeError: an explicit checkpoint that is missing or incomplete, or flags that contradict.
    """
    asked = resume_from_checkpoint
    if asked is not None and asked.strip().lower() in ("true", "1", "yes"):
        asked = "newest"
    elif asked is not None and asked.strip().lower() in ("false", "0", "no", "none", ""):
        raise ResumeError(
            f"--resume_from_checkpoint {resume_from_checkpoint}: to start afresh in an output folder that holds "
            "checkpoints, pass --overwrite_output_dir True instead (it deletes them)."
        )
    if asked is not None and overwrite:
        raise ResumeError(
            "--resume_from_checkpoint and --overwrite_output_dir True both given: resume, or start afresh, not both."
        )
    if asked is not None and asked != "newest":
        path = Path(asked)
        if not path.is_dir():
            raise ResumeError(
                f"--resume_from_checkpoint {asked}: no such folder. Pass a checkpoint-N folder of an earlier run, "
                f"or True for the newest complete one in --output_dir {output_dir}."
            )
        problem = problem_with(path)
        if problem is not None and (path / MANIFEST_NAME).exists():
            raise ResumeError(f"--resume_from_checkpoint {asked}: {problem}. Pick an earlier checkpoint.")
        if problem is not None:
            if not (path / "trainer_state.json").is_file():
                raise ResumeError(
                    f"--resume_from_checkpoint {asked}: {problem}, and it has no trainer_state.json. "
                    "Pick an earlier checkpoint."
                )
            logger.warning("%s has no %s (written by another tool, or interrupted?); resuming from it as it is.",
                           asked, MANIFEST_NAME)
        other = _other_run(path, identity)
        if other:
            logger.warning("%s was trained from something else (%s); resuming from it as asked.", asked, other)
        logger.info("resuming from %s (--resume_from_checkpoint)", asked)
        return str(path)
    if overwrite:
        return None
    path, skipped = newest_complete(output_dir)
    for bad, problem in skipped:
        logger.warning("not resuming from %s: %s.", bad, problem)
    if path is None:
        if asked == "newest":
            raise ResumeError(
                f"--resume_from_checkpoint True: no complete checkpoint in {output_dir}. "
                "Drop the flag to train from the start."
            )
        return None
    other = _other_run(path, identity)
    if other:
        raise ResumeError(
            f"--output_dir {output_dir} holds {path.name} of another run ({other}); resuming would mix the two. "
            "Fix: pass another --output_dir, or --overwrite_output_dir True to delete its checkpoints and start "
            "afresh (or --resume_from_checkpoint PATH to continue from it anyway)."
        )
    step = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))["step"]
    logger.info(
        "resuming from %s (step %d)%s; to start afresh instead, pass --overwrite_output_dir True "
        "(it deletes the checkpoints in %s).", path, step,
        "" if asked else ", found in --output_dir", output_dir,
    )
    return str(path)


def delete_checkpoints(output_dir: str) -> None:
    """Removes every checkpoint-N folder of `output_dir` (--overwrite_output_dir), so a later resume cannot
    pick up a folder of the run being replaced."""
    for _, path in list_checkpoints(output_dir):
        logger.info("--overwrite_output_dir: deleting %s", path)
        shutil.rmtree(path)
    clear_finished(output_dir)


# ---- the settings a resume must keep, and a finished run ----

FINISHED_NAME = "training_finished.json"  # in --output_dir, written once the final model is saved

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
)
_FLAG_NAMES = {"train_sampling_strategy": "--group_by_length / --train_sampling_strategy",
               "warmup_steps": "--warmup_steps / --warmup_ratio"}
# Schedules whose learning rate at a step does not depend on the run's length: only these can be extended.
_LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup")


def _plain(value):
    value = getattr(value, "value", value)  # enums (scheduler type, strategies) by their value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
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
    settings = {name: _plain(getattr(where[holder], name, None)) for name, holder in RESULT_SETTINGS}
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
    for name, _ in RESULT_SETTINGS:
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


def _manifest_run(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8")).get("run") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def finished_record(output_dir: str | os.PathLike) -> Optional[dict]:
    """What `mark_finished` wrote in `output_dir`, or None (no finished run, or an unreadable record)."""
    try:
        record = json.loads((Path(output_dir) / FINISHED_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "step" in record else None


def mark_finished(output_dir: str | os.PathLike, step: int, run: Optional[dict]) -> None:
    """Records in `output_dir` that the final model of this run (`run`: identity and settings) is saved."""
    with atomic_write(Path(output_dir) / FINISHED_NAME) as f:
        json.dump({"step": step, "run": run or {},
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}, f, indent=1)


def clear_finished(output_dir: str | os.PathLike) -> None:
    """Removes the finished mark before the final model is written again (a kill then leaves no false claim)."""
    with contextlib.suppress(FileNotFoundError):
        (Path(output_dir) / FINISHED_NAME).unlink()


def final_save_kept(output_dir: str | os.PathLike, step: int) -> str:
    """What is intact when the final save of a run that ended at `step` fails (for `no_space_error`)."""
    newest, _ = newest_complete(output_dir)
    if newest is not None and newest.name == f"{CHECKPOINT_PREFIX}-{step}":
        return (f"the files already in {output_dir} are as they were, and the trained weights are kept in {newest}: "
                "once there is space, the same command saves the final model from it without training")
    return (f"the files already in {output_dir} are as they were, but the trained weights are lost (no checkpoint "
            "of the last step: see --save_strategy)")


@dataclasses.dataclass
class StartPoint:
    """Where a run starts (`plan_start`)."""

    checkpoint: Optional[str] = None  # resume from this checkpoint folder; None: from the start
    finished_step: Optional[int] = None  # the final model of this very run is saved at this step: nothing to do
    save_only: bool = False  # `checkpoint` is the run's last step: save the final model from it, train nothing


def plan_start(output_dir: str, resume_from_checkpoint: Optional[str], overwrite: bool,
               run: Optional[dict] = None) -> StartPoint:
    """Decides where training starts, before the model loads: from scratch, from a checkpoint, only the final
    save, or nothing at all.

    Args:
        output_dir, resume_from_checkpoint, overwrite: as for `checkpoint_to_resume`.
        run: `run_identity(...)` with `"settings": run_settings(...)`.
    Raises:
        ResumeError: as `checkpoint_to_resume`; and a checkpoint (or finished run) with other settings that
            change the result, listing each (see `check_settings`).
    """
    run = run or {}
    settings = run.get("settings")
    if not overwrite and resume_from_checkpoint is None:
        record = finished_record(output_dir)
        other = _other_run_of(record.get("run"), run) if record is not None else None
        if other and not list_checkpoints(output_dir):  # with checkpoints, checkpoint_to_resume says it
            raise ResumeError(
                f"--output_dir {output_dir} holds the final model of another run ({other}). Fix: pass another "
                "--output_dir, or --overwrite_output_dir True to replace it."
            )
        if record is not None and not other:
            where = f"the finished run in --output_dir {output_dir} (final model at step {record['step']})"
            if not check_settings(where, record.get("run", {}).get("settings"), settings):
                return StartPoint(finished_step=record["step"])
    path = checkpoint_to_resume(output_dir, resume_from_checkpoint, overwrite, run or None)
    if path is None:
        return StartPoint()
    explicit = resume_from_checkpoint is not None and resume_from_checkpoint.strip().lower() not in ("true", "1", "yes")
    changes = check_settings(f"{path}", _manifest_run(Path(path)).get("settings"), settings, explicit)
    try:
        state = json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))
        at_end = not changes and 0 < state["max_steps"] <= state["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        at_end = False
    if at_end:
        logger.info("%s is the last step of this run (%d): saving the final model from it, training nothing.",
                    path, state["global_step"])
    return StartPoint(checkpoint=path, save_only=at_end)
