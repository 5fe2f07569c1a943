"""Training that survives being killed: complete checkpoints, automatic resume, a clean stop on SIGTERM.

    python train.py ... --output_dir out --save_strategy steps --save_steps 200
    # killed (OOM, node lost, time limit)? Run the same command again: it resumes from the newest
    # complete checkpoint in out/. --overwrite_output_dir True starts afresh instead.

Three things on top of the Trainer's own checkpointing:

- **A checkpoint is complete or it is not used.** Once every process has written its part of
  `checkpoint-N` (weights, optimizer, scheduler, RNG states, trainer state), the main process writes
  `checkpoint-N/checkpoint_manifest.json` listing each file and its size (after syncing them to disk).
  A folder without a manifest was interrupted during its save; a file missing or of another size than the
  manifest says was damaged afterwards (a truncated copy, a full disk). Either way the resume reports it
  by name and takes the previous complete checkpoint. Sizes catch truncation; they do not catch bytes
  changed in place, which would cost a full read of every file to hash.
- **Rotation after completion.** `--save_total_limit` is applied only once the new checkpoint has its
  manifest, and it counts complete checkpoints only, so it never deletes the last complete one.
- **SIGTERM** (what schedulers and spot instances send before a kill) is turned into a checkpoint at the
  end of the current optimizer step, then a stop with exit code 143. Under torchrun the processes agree on
  the step (a one-element all-reduce per step), so their checkpoint parts match.

The resumed run continues exactly: the Trainer restores weights, optimizer, scheduler, RNG states and the
step, and skips the batches already trained on. The one sampler that drew its order from the global RNG
state (`--group_by_length`) is given a generator seeded per epoch here, so that a resumed epoch sees the
same order as the interrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import transformers
from transformers.trainer_pt_utils import LengthGroupedSampler

from alpaca_lib.errors import UsageError
from alpaca_lib.fileio import atomic_write, fsync_path
from alpaca_lib.modeling import model_folder_digest

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


def rotate(output_dir: str | os.PathLike, keep: Optional[int], protect: Optional[str] = None) -> None:
    """Keeps the newest `keep` complete checkpoints (and `protect`, the best one); deletes older folders.

    Only folders older than the newest complete checkpoint are ever deleted, so the last complete one
    survives whatever `keep` says. Newer incomplete folders are left for the run to overwrite.
    """
    if not keep or keep <= 0:
        return
    found = list_checkpoints(output_dir)
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
    try:
        recorded = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8")).get("run")
    except (OSError, ValueError):
        return None
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


# ---- the Trainer ----


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """`--group_by_length` batches whose order depends on the seed and the epoch only.

    The Trainer's sampler draws from the global RNG when an epoch starts; a resumed run reaches that point
    in another RNG state, so its epoch would be ordered differently from the interrupted one.
    """

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, generator=torch.Generator(), **kwargs)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


class ResumableTrainer(transformers.Trainer):
    """The Trainer with complete-or-ignored checkpoints and an order that a resume reproduces.

    Both overrides hook private methods of transformers' Trainer (`_save_checkpoint`,
    `_get_train_sampler`); tests/test_resume.py pins what they rely on.
    """

    run_identity: Optional[dict] = None  # `run_identity(...)` of the run, recorded in each checkpoint's manifest

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = SeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths, seed=seed)
        return sampler

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(self._get_output_dir(trial=trial))
        folder = run_dir / f"{CHECKPOINT_PREFIX}-{self.state.global_step}"
        if self.args.should_save and folder.exists():
            # Left by an interrupted save (or a run resumed from an earlier step): never mix two saves' files.
            shutil.rmtree(folder)
        self.accelerator.wait_for_everyone()
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotation waits for the manifest
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every process has written its part
        if self.args.should_save:
            write_manifest(folder, self.state.global_step, self.run_identity)
            rotate(run_dir, limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()


class StopOnSigterm(transformers.TrainerCallback):
    """On SIGTERM, saves a checkpoint at the end of the current optimizer step and stops training.

    `stopped_at` is then the step saved; train.py exits with `PREEMPTED_EXIT_CODE`.
    """

    def __init__(self):
        self.requested = False
        self.stopped_at: Optional[int] = None
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True  # acted on at the end of the step; nothing else is safe inside a handler

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def on_step_end(self, args, state, control, **kwargs):
        requested = self.requested
        if torch.distributed.is_available() and torch.distributed.is_initialized() and args.world_size > 1:
            # A scheduler signals the processes one by one: all of them stop at the first step any saw it.
            flag = torch.tensor([int(requested)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested:
            logger.warning("SIGTERM: saving a checkpoint at step %d, then stopping.", state.global_step)
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control
