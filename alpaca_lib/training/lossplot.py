"""The loss curve of a training run, drawn into its output folder as training_loss.png.

    python -m alpaca_lib.training.lossplot --output_dir runs/demo     (redraws it from runs/demo/trainer_state.json)

train.py calls `plot_loss` at the end of every run, on the main process: the training loss at each
logging step (`--logging_steps`) and, when there is an evaluation split, the eval loss at each
evaluation. The points are the Trainer's own `log_history`, the same numbers as the log and
trainer_state.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import atomic_write

PLOT_NAME = "training_loss.png"


def loss_points(log_history: Sequence[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The (step, loss) points of training and of evaluation in a Trainer's `log_history`.

    Returns:
        (train, eval): each a list of (global step, loss), in the order logged.
    """
    train = [(int(e["step"]), float(e["loss"])) for e in log_history if "loss" in e and "step" in e]
    evals = [(int(e["step"]), float(e["eval_loss"])) for e in log_history if "eval_loss" in e and "step" in e]
    return train, evals


def plot_loss(log_history: Sequence[dict], output_dir: str | Path, title: str = "") -> Optional[Path]:
    """Draws training (and eval) loss against the step into `output_dir`/training_loss.png, atomically.

    Args:
        log_history: the Trainer's `state.log_history`.
        output_dir: the run's output folder.
        title: shown above the plot (e.g. the base model and data).
    Returns:
        The PNG's path, or None when nothing was logged (a run shorter than one logging step).
    """
    train, evals = loss_points(log_history)
    if not train and not evals:
        return None
    import matplotlib  # a second of imports, only when there is a curve to draw

    matplotlib.use("Agg")  # headless: no display is needed, on a cluster node or in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    if train:
        ax.plot(*zip(*train), marker="." if len(train) < 50 else None, label="training loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean cross-entropy over response tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(output_dir) / PLOT_NAME
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def main(output_dir: str) -> None:
    """Redraws `output_dir`/training_loss.png from `output_dir`/trainer_state.json.

    Args:
        output_dir: a train.py --output_dir (or a checkpoint folder) holding trainer_state.json.
    """
    state = Path(output_dir) / "trainer_state.json"
    if not state.is_file():
        raise UsageError(f"--output_dir {output_dir}: no trainer_state.json there; pass a train.py --output_dir "
                         "or one of its checkpoint-N folders.")
    path = plot_loss(_log_history(state), output_dir)
    print(f"wrote {path}" if path else f"{state}: no loss was logged; nothing to plot")


def _log_history(state: Path) -> list[dict]:
    """The `log_history` of a trainer_state.json; a damaged file is a UsageError naming it."""
    fix = ("The file is damaged (cut short by a full disk or a kill, or edited); pass one of the run's "
           "checkpoint-N folders instead, each holds its own trainer_state.json.")
    try:
        state_dict = json.loads(state.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UsageError(f"{state}: not UTF-8 text (byte {e.start}). {fix}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{state}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}). {fix}") from None
    history = state_dict.get("log_history", []) if isinstance(state_dict, dict) else None
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise UsageError(f"{state}: expected an object whose 'log_history' is a list of objects. {fix}")
    try:
        loss_points(history)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{state}: a 'log_history' entry holds a step or a loss that is not a number ({e}). "
                         f"{fix}") from None
    return history


if __name__ == "__main__":
    from alpaca_lib.core.cli import run_fire

    run_fire(main, "python -m alpaca_lib.training.lossplot", config_file=False)
