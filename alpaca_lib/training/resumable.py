"""The Trainer's side of resumable training: complete checkpoints saved, a stop on SIGTERM, exact resumes.

    trainer = ResumableTrainer(model=model, args=training_args, callbacks=[StopOnSigterm()], ...)
    trainer.run_identity = {**run_identity(...), "settings": run_settings(...)}   # recorded in each manifest
    trainer.prompt_format = prompt_format     # each checkpoint is prompted as the final model is (prompt_format.json)

What a checkpoint holds is alpaca_lib/training/checkpoints.py, which one a run resumes from
alpaca_lib/training/start.py. Here:

- **Saving.** `ResumableTrainer._save_checkpoint` removes a folder left by an interrupted save, lets every
  process write its part and the prompt format (`save_format`: eval_model.py prompts a checkpoint folder as it
  prompts the final model), then writes the manifest (`checkpoints.write_manifest`) and only after it
  rotates (`checkpoints.rotate`). A full disk during the save is one `error:` line naming the previous
  complete checkpoint, and the half-written folder is removed.
- **SIGTERM** (what schedulers and spot instances send before a kill) and **Ctrl-C** (SIGINT) are turned into
  a checkpoint at the end of the current optimizer step, then a stop with exit code 143 (130 for Ctrl-C). Under
  torchrun the processes agree on the step (a one-element all-reduce per step), so their checkpoint parts match.

The resumed run continues exactly: the Trainer restores weights, optimizer, scheduler, RNG states and the
step, and skips the batches already trained on. The one sampler that drew its order from the global RNG
state (`--group_by_length`) is given a generator seeded per epoch here, so that a resumed epoch sees the
same order as the interrupted one.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Optional

import torch
import transformers
from transformers.trainer_pt_utils import LengthGroupedSampler

from alpaca_lib.core.fileio import disk_full_as_error, follow_umask
from alpaca_lib.core.signals import StopSignals
from alpaca_lib.data.formats import PromptFormat, save_format
from alpaca_lib.training import checkpoints
from alpaca_lib.training.checkpoints import CHECKPOINT_PREFIX, list_checkpoints, problem_with, rotate

logger = logging.getLogger(__name__)


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

    The overrides hook private methods of transformers' Trainer (`_save_checkpoint`, `_get_train_sampler`,
    and `_load_best_model` in `load_without_training`); tests/test_resume.py and tests/test_train_guards.py
    pin what they rely on.
    """

    run_identity: Optional[dict] = None  # `run_identity(...)` and settings of the run, recorded in each manifest
    prompt_format: Optional[PromptFormat] = None  # the run's format, saved into each checkpoint as the final save does

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = SeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths, seed=seed)
        return sampler

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(self._get_output_dir(trial=trial))
        step = self.state.global_step
        folder = run_dir / f"{CHECKPOINT_PREFIX}-{step}"
        previous = [p for s, p in list_checkpoints(run_dir) if s < step and problem_with(p) is None]
        kept = (f"the previous complete checkpoint, {previous[-1]}, is intact (the same command resumes from it)"
                if previous else "this run has no complete checkpoint yet")
        if self.args.should_save and folder.exists():
            # Left by an interrupted save (or a run resumed from an earlier step): never mix two saves' files.
            shutil.rmtree(folder)
        self.accelerator.wait_for_everyone()
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotation waits for the manifest
        # A save that fills the disk leaves a folder without a manifest: it is removed to give the space back.
        cleanup = (lambda: shutil.rmtree(folder, ignore_errors=True)) if self.args.should_save else None
        try:
            with disk_full_as_error(folder, kept, cleanup):
                super()._save_checkpoint(model, trial)
                self.accelerator.wait_for_everyone()  # every process has written its part
                if self.args.should_save:
                    follow_umask(folder)  # safetensors leaves its weight files private (0600)
                    if self.prompt_format is not None:
                        save_format(self.prompt_format, folder)
                    checkpoints.write_manifest(folder, step, self.run_identity)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            rotate(run_dir, limit, self.state.best_model_checkpoint, upto=step)
        self.accelerator.wait_for_everyone()

    def load_without_training(self, checkpoint: str) -> None:
        """Restores `checkpoint`, the last step of the run, as `train(resume_from_checkpoint=...)` would, and
        takes no step: for a final save that was interrupted.

        A resume at the last step of a --max_steps run that ends inside an epoch would otherwise train one
        step more: the Trainer checks the step count only after a step. Going through `train` keeps every
        way of loading (plain, LoRA adapters, FSDP, DeepSpeed) the Trainer's own.
        """
        stop = _StopBeforeAStep()
        self.add_callback(stop)
        try:
            self.train(resume_from_checkpoint=checkpoint)
        except _NoStepWanted:
            self.callback_handler.on_train_end(self.args, self.state, self.control)
            if self.args.load_best_model_at_end and self.state.best_model_checkpoint is not None:
                self._load_best_model()
        finally:
            self.remove_callback(stop)


class _NoStepWanted(Exception):
    """Raised before the first step of `load_without_training`; never escapes it."""


class _StopBeforeAStep(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        raise _NoStepWanted


def signal_name(signum: int) -> str:
    """How the log and the last line name a stop signal: "SIGTERM", "Ctrl-C (SIGINT)"."""
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


def _say_what_ctrl_c_does(signum: int) -> None:
    if signum == signal.SIGINT and int(os.environ.get("RANK", "0")) == 0:
        print("train.py: Ctrl-C: saving a checkpoint at the end of this step, then stopping; Ctrl-C again stops now "
              "without saving.", file=sys.stderr, flush=True)


class StopOnSigterm(transformers.TrainerCallback):
    """On SIGTERM or SIGINT (Ctrl-C), saves a checkpoint at the end of the current optimizer step and stops training.

    `stopped_at` is then the step saved and `stopped_by` the signal; train.py exits with 128 + that signal:
    `PREEMPTED_EXIT_CODE` (143) for SIGTERM, 130 for Ctrl-C (alpaca_lib/training/run.py).
    """

    def __init__(self):
        self.stopped_at: Optional[int] = None
        self.stopped_by: Optional[int] = None
        # Noted by the handler, acted on at the end of the step; caught whatever handled them before.
        # A second Ctrl-C stops at once, without a checkpoint: the end of the step may never come (a hung collective).
        self._signals = StopSignals((signal.SIGTERM, signal.SIGINT), poll=True, take_over=True,
                                    again_stops=(signal.SIGINT,), on_first=_say_what_ctrl_c_does)

    @property
    def requested(self) -> bool:
        """Whether SIGTERM or SIGINT was caught: training saves and stops at the end of the current step."""
        return self._signals.received is not None

    def on_train_begin(self, args, state, control, **kwargs):
        if not self._signals.install():
            logger.warning("training runs outside the main thread, where Python cannot catch signals: SIGTERM "
                           "or Ctrl-C will stop it without saving a checkpoint.")

    def on_train_end(self, args, state, control, **kwargs):
        self._signals.restore()

    def on_step_end(self, args, state, control, **kwargs):
        received = self._signals.received or 0
        if torch.distributed.is_available() and torch.distributed.is_initialized() and args.world_size > 1:
            # A scheduler signals the processes one by one: all of them stop at the first step any saw it (and
            # report the same signal: SIGTERM where some saw SIGTERM, as its number is the larger).
            flag = torch.tensor([received], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            received = int(flag.item())
        if received:
            logger.warning("%s: saving a checkpoint at step %d, then stopping.", signal_name(received),
                           state.global_step)
            self.stopped_at = state.global_step
            self.stopped_by = received
            control.should_save = True
            control.should_training_stop = True
        return control
