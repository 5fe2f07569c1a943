"""Runs train.py with a test hook armed: hold at a step, kill during the final save, or fill the disk.

    TRAIN_HOOK=hold:2 python tests/train_hooks.py train.py ...          # prints HOLDING, then sleeps at step 2
    TRAIN_HOOK=kill_final python tests/train_hooks.py train.py ...      # SIGKILL once the final model is staged
    TRAIN_HOOK=fsize:4:4096 python tests/train_hooks.py train.py ...    # file size limit 4096 bytes from the
                                                                         # save of checkpoint-4 on ("final": the
                                                                         # final save)

Test-only. The file size limit (RLIMIT_FSIZE) makes every write past it fail with EFBIG, as a full disk
fails with ENOSPC; SIGXFSZ, which would kill the process instead, is ignored, as a shell's `ulimit -f`
leaves it for a program that handles the error. Under torchrun the hooks act in every process.
"""

from __future__ import annotations

import os
import resource
import runpy
import signal
import sys
import time

import alpaca_lib.training.resumable as resumable
import alpaca_lib.training.saving as saving


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def _arm(hook: str) -> None:
    kind, _, rest = hook.partition(":")
    if kind == "hold":
        step = int(rest)
        original = resumable.StopOnSigterm.on_step_end

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                print(f"HOLDING at step {step} (rank {args.process_index})", flush=True)
                while True:
                    time.sleep(1)
            return original(self, args, state, control, **kwargs)

        resumable.StopOnSigterm.on_step_end = on_step_end
    elif kind == "kill_final":
        def publish(src, dst):
            sys.stdout.flush()
            os.killpg(os.getpgid(0), signal.SIGKILL)

        saving.publish = publish
    elif kind == "fsize":
        where, limit = rest.split(":")
        if where == "final":
            original_final = saving.save_final

            def save_final(*args, **kwargs):
                _limit_file_size(int(limit))
                return original_final(*args, **kwargs)

            saving.save_final = save_final
        else:
            original_save = resumable.ResumableTrainer._save_checkpoint

            def _save_checkpoint(self, model, trial):
                if self.state.global_step == int(where):
                    _limit_file_size(int(limit))
                return original_save(self, model, trial)

            resumable.ResumableTrainer._save_checkpoint = _save_checkpoint
    else:
        raise SystemExit(f"TRAIN_HOOK: unknown hook {hook!r}; use hold:STEP, kill_final or fsize:STEP|final:BYTES")


if __name__ == "__main__":
    _arm(os.environ["TRAIN_HOOK"])
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
