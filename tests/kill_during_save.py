"""Runs train.py and SIGKILLs the whole run in the middle of one checkpoint's save.

    KILL_DURING_SAVE=12:rng python tests/kill_during_save.py train.py ...

Test-only. `STEP:rng` kills while the Trainer writes checkpoint-STEP (weights and optimizer written, RNG
state not yet); `STEP:manifest` kills once the Trainer has written all of checkpoint-STEP but before the
folder is marked complete (the moment the Trainer's own rotation would already have deleted older
checkpoints). The kill is real (SIGKILL to the process group), so nothing gets to clean up.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

# As `python train.py` does: the script's own folder first on sys.path (not tests/), so that alpaca_lib,
# patched below, is the one next to the script, not whichever one the environment has installed.
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[1]))

import transformers  # noqa: E402

import alpaca_lib.training.checkpoints as checkpoints  # noqa: E402


def _kill() -> None:
    sys.stdout.flush()
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _arm(step: int, where: str) -> None:
    if where == "rng":
        original = transformers.Trainer._save_rng_state

        def save_rng_state(self, output_dir):
            if self.state.global_step == step:
                _kill()
            original(self, output_dir)

        transformers.Trainer._save_rng_state = save_rng_state
    elif where == "manifest":
        original = checkpoints.write_manifest

        def write_manifest(folder, at_step, run=None):
            if at_step == step:
                _kill()
            original(folder, at_step, run)

        checkpoints.write_manifest = write_manifest
    else:
        raise SystemExit(f"KILL_DURING_SAVE: unknown place {where!r}; use rng or manifest")


if __name__ == "__main__":
    step, where = os.environ["KILL_DURING_SAVE"].split(":")
    _arm(int(step), where)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
