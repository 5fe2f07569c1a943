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

from alpaca_lib.progress import LogProgress

logger = logging.getLogger(__name__)


class TrainerLogProgress(transformers.TrainerCallback):
    """Optimizer steps as `LogProgress` lines, on the main process only."""

    def __init__(self, stream: Optional[TextIO] = None, every_s: Optional[float] = None):
        self.stream, self.every_s, self.bar = stream, every_s, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = LogProgress(total=state.max_steps, desc="training", unit="step", initial=state.global_step,
                                   stream=self.stream, every_s=self.every_s)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix_str(f"loss {float(logs['loss']):.4g}")

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
