"""The life of one train.py run in its --output_dir: the lock, where it starts, how it ends.

    with training_run(model_args, data_args, training_args, records.key()) as run:   # holds --output_dir
        if run.already_finished():      # said on stderr: the final model of this run is there
            return None
        run.check_weights()             # a damaged weight file in --model_name_or_path: one error line
        trainer = ResumableTrainer(..., callbacks=[run.sigterm, ...])
        run.train(trainer)              # from the start, from a checkpoint, or only reloading the last step
        with run.final_save(trainer):   # raises Preempted after SIGTERM or Ctrl-C; a full disk is one error line
            trainer.save_model(...)     # on success the run is marked finished

train.py's `train` is the one caller; `main` turns `Preempted` into its exit status (143 after SIGTERM).
What the decisions are is alpaca_lib/training/start.py (where to start, the finished mark),
alpaca_lib/training/identity.py (whether a checkpoint is this run's) and, over several nodes,
alpaca_lib/training/nodes.py (every node started alike, a lost node named); here they are made in their order.
"""
from __future__ import annotations

import contextlib
import signal
import sys
from typing import Iterator, Optional

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import disk_full_as_error
from alpaca_lib.core.locking import job_lock
from alpaca_lib.core.weightfiles import check_local_weights
from alpaca_lib.training.checkpoints import final_save_kept, newest_complete
from alpaca_lib.training.identity import run_identity, run_settings
from alpaca_lib.training.nodes import NodeWatch, flags_of, model_digest
from alpaca_lib.training.resumable import StopOnSigterm, signal_name
from alpaca_lib.training.start import StartPoint, clear_finished, delete_checkpoints, mark_finished, plan_start

# 128 + SIGTERM: what a process killed by SIGTERM reports, so schedulers read the stop as a preemption.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
    """Training stopped early on SIGTERM or Ctrl-C, after saving a checkpoint to resume from.

    `exit_code` is what train.py exits with: 128 + the signal (`PREEMPTED_EXIT_CODE` for SIGTERM, 130 for Ctrl-C).
    """

    def __init__(self, message: str, exit_code: int = PREEMPTED_EXIT_CODE):
        super().__init__(message)
        self.exit_code = exit_code


class TrainingRun:
    """One run of train.py in --output_dir, made by `training_run` (which holds the lock and plans the start)."""

    def __init__(self, training_args, record: dict, start: StartPoint, model_args=None,
                 nodes: Optional[NodeWatch] = None):
        self.args = training_args
        self.model_args = model_args  # --model_name_or_path and --gguf_file, for `check_weights`
        self.record = record  # `run_identity` and `run_settings`: recorded in each checkpoint and the finished mark
        self.start = start
        self.sigterm = StopOnSigterm()  # the Trainer's callback: a checkpoint, then a stop, on SIGTERM or Ctrl-C
        self.nodes = nodes or NodeWatch(training_args)  # a lost node: one error line naming it
        self.nodes.stopping = lambda: self.sigterm.requested

    def already_finished(self) -> bool:
        """True when --output_dir holds the final model of this very run; then says so (main process) on stderr."""
        if self.start.finished_step is None:
            return False
        if self.args.process_index == 0:
            print(f"train.py: {self.args.output_dir} already holds the final model of this run (step "
                  f"{self.start.finished_step}); nothing to train. To train it again from the start, pass "
                  "--overwrite_output_dir True.", file=sys.stderr, flush=True)
        return True

    def check_weights(self) -> None:
        """Refuses a damaged weight file (cut short, empty, not what its name says) in a local --model_name_or_path
        with one error line naming it, instead of the loader's traceback. Called just before the model loads: the
        other refusals (a resume with other settings, ...) are decided without the weights and come first, and
        --output_dir is left as it was (a folder this run created, still empty, is removed again).

        Raises:
            WeightFileError: a UsageError naming the file, what is wrong with it and the fix.
        """
        if self.model_args is not None:
            check_local_weights(self.model_args.model_name_or_path, "--model_name_or_path", self.model_args.gguf_file)

    def train(self, trainer) -> None:
        """Trains `trainer` (a `ResumableTrainer` with `self.sigterm` among its callbacks) from the planned start.

        Clears what this run replaces first: the old checkpoints under --overwrite_output_dir, and the finished
        mark. A run whose last checkpoint is its last step only reloads it (`load_without_training`).
        """
        args = self.args
        trainer.run_identity = self.record
        if args.overwrite_output_dir and args.should_save:
            delete_checkpoints(args.output_dir)
        if args.should_save:
            clear_finished(args.output_dir)  # the final model there is no longer this run's last word
        trainer.accelerator.wait_for_everyone()
        with self.nodes.lost_as_error(self._resume_point, lambda: trainer.state.global_step):
            if self.start.save_only:
                trainer.load_without_training(self.start.checkpoint)
            else:
                trainer.train(resume_from_checkpoint=self.start.checkpoint)

    def _resume_point(self) -> str:
        path, _ = newest_complete(self.args.output_dir)
        if path is None:
            return f"{self.args.output_dir} holds no complete checkpoint yet, so the run starts again from the start"
        return f"the last complete checkpoint in {self.args.output_dir} is {path.name}"

    @contextlib.contextmanager
    def final_save(self, trainer) -> Iterator[None]:
        """Wraps the final save: a full disk is one error line saying what is intact, and a save that completes
        marks the run finished (main process).

        Raises:
            Preempted: SIGTERM or Ctrl-C stopped training (its checkpoint is saved); nothing is saved here then.
        """
        args = self.args
        if self.sigterm.stopped_at is not None:
            raise Preempted(
                f"stopped by {signal_name(self.sigterm.stopped_by)}: saved {args.output_dir}/checkpoint-"
                f"{self.sigterm.stopped_at} at step {self.sigterm.stopped_at}. Run the same command again to resume "
                "from it.", 128 + self.sigterm.stopped_by)
        kept = final_save_kept(args.output_dir, trainer.state.global_step)
        # A full disk: one line, the previous files intact. A node lost while the shards are gathered: one line too.
        with disk_full_as_error(args.output_dir, kept), \
                self.nodes.lost_as_error(self._resume_point, lambda: trainer.state.global_step):
            yield
            if args.should_save:
                mark_finished(args.output_dir, trainer.state.global_step, self.record)


@contextlib.contextmanager
def training_run(model_args, data_args, training_args, data_key: str, eval_key: str = "") -> Iterator[TrainingRun]:
    """Holds --output_dir for this job and decides where the run starts, before the model loads.

    Args:
        model_args, data_args, training_args: train.py's parsed flags.
        data_key: the training data's digest (`DataSource.key()`), recorded with the model to tell runs apart.
        eval_key: the --eval_data_path data's digest ("" without it), compared between nodes.
    Yields:
        The `TrainingRun`; the lock is released when the block ends.
    Raises:
        OutputLockedError: another job writes --output_dir. ResumeError: a resume refused (see `plan_start`).
        NodesDisagreeError: over several processes, some were started with other flags, data or template file, or
            see another --output_dir (every process raises it, before the model loads).
    """
    record = {**run_identity(model_args.model_name_or_path, model_args.gguf_file, data_key, data_args.data_path),
              "settings": run_settings(model_args, data_args, training_args)}
    # One job at a time writes --output_dir (under torchrun, rank 0 holds the lock for all processes). Under
    # torchrun each worker also watches its launcher and beats, so that a lost node is named (nodes.py).
    with NodeWatch(training_args) as nodes, job_lock(training_args.output_dir, "train.py"):
        # One identity for the job, rank 0's: each node's own copy of a model folder has its own file times, which
        # a resume on one machine counts. What the nodes hold is compared below, by content.
        record["model_content"] = nodes.from_rank_0(record["model_content"])
        try:
            start, refusal = plan_start(training_args.output_dir, training_args.resume_from_checkpoint,
                                        training_args.overwrite_output_dir, record), None
        except UsageError as e:  # raised on every process, after they compared notes
            start, refusal = None, e
        # The files a flag names are compared too (a data or template file by its bytes, a model folder by
        # `model_digest`): the same path can hold another copy on each node.
        digests = {"--data_path": data_key, "--prompt_template": record["settings"]["prompt_template_sha256"],
                   "--model_name_or_path": model_digest(model_args.model_name_or_path), "--eval_data_path": eval_key}
        nodes.agree(flags_of(model_args, data_args, training_args), digests, start, refusal)
        yield TrainingRun(training_args, record, start, model_args, nodes)
