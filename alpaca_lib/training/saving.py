"""train.py's final save: written whole to a staging folder, then moved into `output_dir` file by file.

`output_dir` also holds what a run keeps beside the model (checkpoints, trainer_state.json), so it
cannot be swapped as one folder. Instead every process saves into `output_dir/.final-model.partial`
(the Trainer gathers FSDP/DeepSpeed shards and writes on the main process), and only when that save
has finished, and passed its check, does the main process move each file into place with
`os.replace`. A crash, a failed gather or a kill during the save leaves the previous files of
`output_dir` as they were (and at most a hidden staging folder, cleared by the next save); a file in
`output_dir` is never half written. Weight files of an earlier save that the new one does not have
(say, shards of a larger model) are removed once the new files are in place, as `save_pretrained` does.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional

from alpaca_lib.core.fileio import publish

STAGING_NAME = ".final-model.partial"


def save_final(trainer, output_dir: str, save: Callable[[str], None],
               check: Optional[Callable[[Path], None]] = None) -> None:
    """Runs `save(staging)` on every process, then moves the staged files into `output_dir`.

    Args:
        trainer: the run's `transformers.Trainer` (its processes wait for each other around the save).
        output_dir: the run's output folder.
        save: writes the final model into the folder it is given; called on every process, as the
            Trainer's own saving expects.
        check: called on the main process with the staging folder before anything moves; an exception
            from it leaves `output_dir` untouched.
    """
    staging = Path(output_dir) / STAGING_NAME
    main = trainer.args.should_save
    accelerator = trainer.accelerator
    if main:
        shutil.rmtree(staging, ignore_errors=True)  # left over by a killed save
    accelerator.wait_for_everyone()
    try:
        save(str(staging))
        accelerator.wait_for_everyone()
        if main:
            if check is not None:
                check(staging)
            publish(staging, Path(output_dir))
    finally:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
