"""What the Trainer's log leaves out: progress lines for a log file, and examples per second under packing.

    trainer.add_callback(TrainerLogProgress())          # `training: 120 of 400 steps (30%), ...` every 30 s
    trainer.add_callback(PackedExamplesPerSecond(4.5))  # train_examples_per_second beside the rows' rate

train.py adds the first when stderr is not a terminal (the tqdm bar shows only on one), and the second
with --packing, where the Trainer's `train_samples_per_second` counts packed rows, not examples.
"""

from __future__ import annotations

import logging
from typing import Optional, TextIO

import transformers

from alpaca_lib.core.progress import LogProgress, on_terminal
from alpaca_lib.data.packing import PackedDataset

logger = logging.getLogger(__name__)


class TrainerLogProgress(transformers.TrainerCallback):
    """Optimizer steps as `LogProgress` lines, on the main process only."""

    def __init__(self, stream: Optional[TextIO] = None, every_s: Optional[float] = None):
        self.stream, self.every_s, self.bar = stream, every_s, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = LogProgress(total=state.max_steps, desc="training", unit="step", initial=state.global_step,
                                   stream=self.stream, every_s=self.every_s, heartbeat=True)

    def on_step_end(self, args, state, control, **kwargs):
        # On a logging step the loss comes next, in on_log: count the step there, so its line shows it.
        if self.bar is not None and not control.should_log:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix_str(f"loss {float(logs['loss']):.4g}")
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class PackedExamplesPerSecond(transformers.TrainerCallback):
    """Adds `train_examples_per_second` to the final training metrics when each row packs several examples.

    Args:
        examples: examples in the packed training set.
        rows: rows they were packed into (what the Trainer counts as samples).
    """

    def __init__(self, examples: int, rows: int):
        self.examples, self.rows = examples, rows

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_samples_per_second" not in logs:
            return
        rate = round(logs["train_samples_per_second"] * self.examples / max(1, self.rows), 3)
        logs["train_examples_per_second"] = rate
        if state.log_history and "train_samples_per_second" in state.log_history[-1]:
            state.log_history[-1]["train_examples_per_second"] = rate
        if state.is_world_process_zero:
            logger.info("packing: %s examples/s (%d examples in %d rows; train_samples_per_second counts rows)",
                        rate, self.examples, self.rows)


# accelerate's names for how the work is spread, in the words users know (NO: one process, no wrapper).
_LAUNCH_NAMES = {"MULTI_CPU": "DDP", "MULTI_GPU": "DDP", "MULTI_XPU": "DDP", "MULTI_NPU": "DDP", "MULTI_HPU": "DDP",
                 "FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}


def describe_launch(distributed_type: str, world_size: int, device, per_node: Optional[int] = None) -> str:
    """The log line that says how training runs: `training in one process on cpu`,
    `training with DDP (MULTI_CPU) over 2 processes on cpu`, `training with FSDP over 8 processes on cuda:0`,
    `training with FSDP over 2 nodes x 4 processes on cuda:0`.

    Args:
        per_node: processes per node (torchrun's LOCAL_WORLD_SIZE); nodes are named when there are several.
    """
    if distributed_type == "NO" and world_size == 1:
        return f"training in one process on {device}"
    name = _LAUNCH_NAMES.get(distributed_type, distributed_type)
    if name.upper() != distributed_type:
        name = f"{name} ({distributed_type})"
    over = f"{world_size} process{'es' if world_size != 1 else ''}"
    if per_node and world_size > per_node:
        over = f"{world_size // per_node} nodes x {per_node} process{'es' if per_node != 1 else ''}"
    return f"training with {name} over {over} on {device}"


def log_callbacks(train_dataset, stream: Optional[TextIO] = None) -> list:
    """The callbacks train.py adds: progress lines when stderr is not a terminal, examples/s under packing."""
    callbacks = [] if on_terminal(stream) else [TrainerLogProgress(stream)]
    if isinstance(train_dataset, PackedDataset):
        callbacks.append(PackedExamplesPerSecond(len(train_dataset.examples), len(train_dataset)))
    return callbacks


def log_progress_off_terminal(trainer, stream: Optional[TextIO] = None) -> None:
    """Off a terminal, swaps the Trainer's tqdm bar (carriage-return redraws, unreadable in a log file) for
    the printer of its log dicts; the progress lines of `TrainerLogProgress` take the bar's place."""

    if not on_terminal(stream) and trainer.pop_callback(transformers.trainer_callback.ProgressCallback) is not None:
        trainer.add_callback(transformers.trainer_callback.PrinterCallback)
