"""Where a run starts: from scratch, from a checkpoint, only the final save, or not at all (already finished).

    start = plan_start(output_dir, resume_from_checkpoint, overwrite, run)   # before the model loads
    ...                                                                      # train, save the final model
    mark_finished(output_dir, trainer.state.global_step, run)

`plan_start` is called before the model loads, so that a bad path or a refused resume costs nothing; train.py
calls it through alpaca_lib/training/run.py. A run whose final model is saved (`training_finished.json`, written
by `mark_finished`) trains nothing when run again; one whose last checkpoint is at its last step only saves the
final model from it; otherwise the newest complete checkpoint of the same run is resumed from
(`checkpoint_to_resume`), and one of another run, or trained with other settings, is refused
(alpaca_lib/training/identity.py).

Nothing here imports torch or transformers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from alpaca_lib.core.fileio import atomic_write
from alpaca_lib.training.checkpoints import (
    MANIFEST_NAME,
    list_checkpoints,
    manifest_run,
    newest_complete,
    problem_with,
)
from alpaca_lib.training.identity import ResumeError, check_settings, other_run

logger = logging.getLogger(__name__)

FINISHED_NAME = "training_finished.json"  # in --output_dir, written once the final model is saved


# ---- a finished run ----


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


def delete_checkpoints(output_dir: str) -> None:
    """Removes every checkpoint-N folder of `output_dir` (--overwrite_output_dir), so a later resume cannot
    pick up a folder of the run being replaced."""
    for _, path in list_checkpoints(output_dir):
        logger.info("--overwrite_output_dir: deleting %s", path)
        shutil.rmtree(path)
    clear_finished(output_dir)


# ---- which checkpoint a run resumes from ----


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
        other = other_run(manifest_run(path), identity)
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
    other = other_run(manifest_run(path), identity)
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


# ---- the whole decision ----


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
        other = other_run(record.get("run"), run) if record is not None else None
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
    changes = check_settings(f"{path}", manifest_run(Path(path)).get("settings"), settings, explicit)
    try:
        state = json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))
        at_end = not changes and 0 < state["max_steps"] <= state["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        at_end = False
    if at_end:
        logger.info("%s is the last step of this run (%d): saving the final model from it, training nothing.",
                    path, state["global_step"])
    return StartPoint(checkpoint=path, save_only=at_end)
