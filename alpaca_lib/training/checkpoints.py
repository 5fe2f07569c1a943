"""Checkpoint folders that are complete or not used: the manifest, the newest complete one, rotation.

    python train.py ... --output_dir out --save_strategy steps --save_steps 200
    # killed (OOM, node lost, time limit)? Run the same command again: it resumes from the newest
    # complete checkpoint in out/. --overwrite_output_dir True starts afresh instead.

The files. The Trainer's side (saving them, a clean stop on SIGTERM, an order that a resume reproduces) is
alpaca_lib/training/resumable.py; which checkpoint a run starts from is alpaca_lib/training/start.py, and whether
it is this run's (model, data, settings) alpaca_lib/training/identity.py. On top of the Trainer's own checkpointing:

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
- **Each manifest records the run** that wrote it (`run_identity` and `run_settings`), read back by
  `manifest_run`, so that a resume of another run is refused.

Nothing here imports torch or transformers: commands that only read checkpoints (the judge's leaderboard,
for one) start without them.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from alpaca_lib.core.fileio import atomic_write, fsync_path

logger = logging.getLogger(__name__)

MANIFEST_NAME = "checkpoint_manifest.json"
CHECKPOINT_PREFIX = "checkpoint"  # the Trainer's folder names: checkpoint-<global step>
_CHECKPOINT_DIR = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")


def write_manifest(folder: Path, step: int, run: Optional[dict] = None) -> None:
    """Marks `folder` complete: syncs its files to disk, then writes the list of files and sizes atomically.

    `run` (`run_identity` and `run_settings`, alpaca_lib/training/identity.py) records what the checkpoint was
    trained from, so that a later resume with another model or other data is refused instead of mixing the two runs.
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


def manifest_run(path: Path) -> dict:
    """The run recorded in checkpoint `path`'s manifest (see `write_manifest`); {} when none is readable."""
    try:
        return json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8")).get("run") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def final_save_kept(output_dir: str | os.PathLike, step: int) -> str:
    """What is intact when the final save of a run that ended at `step` fails (for `no_space_error`)."""
    newest, _ = newest_complete(output_dir)
    if newest is not None and newest.name == f"{CHECKPOINT_PREFIX}-{step}":
        return (f"the files already in {output_dir} are as they were, and the trained weights are kept in {newest}: "
                "once there is space, the same command saves the final model from it without training")
    return (f"the files already in {output_dir} are as they were, but the trained weights are lost (no checkpoint "
            "of the last step: see --save_strategy)")
