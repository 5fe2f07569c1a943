"""The loss plot: bash scripts/test.sh tests/test_lossplot.py (train.py writing it is in test_train.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alpaca_lib.training.lossplot import PLOT_NAME, loss_points, plot_loss
from conftest import REPO_ROOT

HISTORY = [
    {"loss": 2.5, "grad_norm": 1.0, "learning_rate": 1e-4, "epoch": 0.1, "step": 1},
    {"loss": 2.0, "epoch": 0.2, "step": 2},
    {"eval_loss": 2.2, "eval_runtime": 1.0, "epoch": 0.2, "step": 2},
    {"loss": 1.5, "epoch": 0.3, "step": 3},
    {"train_runtime": 3.0, "train_loss": 2.0, "epoch": 0.3, "step": 3},
]


def test_points_are_the_logged_losses():
    assert loss_points(HISTORY) == ([(1, 2.5), (2, 2.0), (3, 1.5)], [(2, 2.2)])


def test_png_is_written_and_nothing_when_nothing_was_logged(tmp_path):
    path = plot_loss(HISTORY, tmp_path, title="t")
    assert path == tmp_path / PLOT_NAME and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss([{"train_runtime": 1.0, "step": 0}], tmp_path / "empty") is None
    assert not (tmp_path / "empty").exists()


def test_both_curves_are_drawn(tmp_path, monkeypatch):
    """The figure holds the training curve and the eval curve, with the logged points, and the PNG shows the
    eval curve's colour (matplotlib's second, tab:orange) only when there is an eval loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    plot_loss(HISTORY, tmp_path / "both")
    lines = figures[0].axes[0].get_lines()
    assert [(x.get_label(), list(x.get_xdata()), list(x.get_ydata())) for x in lines] == [
        ("training loss", [1, 2, 3], [2.5, 2.0, 1.5]), ("eval loss", [2], [2.2])]
    assert [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()] == ["training loss", "eval loss"]
    plot_loss([e for e in HISTORY if "eval_loss" not in e], tmp_path / "train_only")
    assert [x.get_label() for x in figures[1].axes[0].get_lines()] == ["training loss"]

    def orange_pixels(folder):
        rgb = matplotlib.image.imread(folder / PLOT_NAME)[..., :3]
        return int((abs(rgb - [1.0, 0x7F / 255, 0x0E / 255]).max(axis=-1) < 0.02).sum())

    assert orange_pixels(tmp_path / "both") > 50 and orange_pixels(tmp_path / "train_only") == 0


def test_command_redraws_from_trainer_state(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": HISTORY}), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "alpaca_lib.training.lossplot", "--output_dir", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == f"wrote {tmp_path / PLOT_NAME}\n"
    missing = subprocess.run([sys.executable, "-m", "alpaca_lib.training.lossplot", "--output_dir", str(tmp_path / "no")],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith(f"error: --output_dir {tmp_path / 'no'}: no trainer_state")


def test_train_writes_the_plot_progress_lines_and_examples_per_second(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """One short packed run with a held-out split: the PNG, `training: ...` lines, and examples/s."""
    import train
    from alpaca_lib.core.progress import INTERVAL_ENV

    monkeypatch.setenv(INTERVAL_ENV, "0")  # a line at every step
    out = tmp_path / "out"
    trainer = train.train([
        "--model_name_or_path", str(tiny_llama_dir), "--data_path", str(REPO_ROOT / "alpaca_data.json"),
        "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "2", "--packing", "True",
        "--val_set_size", "8", "--evaluation_strategy", "steps", "--eval_steps", "2", "--learning_rate", "3e-3",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--model_max_length", "256",
        "--preprocessing_cache_dir", str(tmp_path / "cache"), "--seed", "0", "--disable_tqdm", "True",
    ])
    history = trainer.state.log_history
    train_points, eval_points = loss_points(history)
    assert [s for s, _ in train_points] == [1, 2, 3, 4] and [s for s, _ in eval_points] == [2, 4]
    assert (out / PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = history[-1]
    packed = trainer.train_dataset
    assert final["train_examples_per_second"] == round(
        final["train_samples_per_second"] * len(packed.examples) / len(packed), 3)
    assert len(packed) < len(packed.examples)  # several examples a row: more examples than rows a second
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("training: ")]
    assert [x.split(",")[0] for x in lines] == [f"training: {n} of 4 steps ({25 * n}%)" for n in (1, 2, 3, 4)]
    assert ", done in " in lines[-1] and lines[0].endswith("left (loss " + f"{train_points[0][1]:.4g})")


FIX = ("The file is damaged (cut short by a full disk or a kill, or edited); pass one of the run's checkpoint-N "
       "folders instead, each holds its own trainer_state.json.")


@pytest.mark.parametrize("content, problem", [
    ('{"log_history": [{"step": 1, "loss": 2.5}', ":2:1: not valid JSON (Expecting ',' delimiter)."),
    ('{"log_history": [1, 2]}', ": expected an object whose 'log_history' is a list of objects."),
    ('[]', ": expected an object whose 'log_history' is a list of objects."),
    ('{"log_history": [{"step": 1, "loss": "high"}]}',
     ": a 'log_history' entry holds a step or a loss that is not a number (could not convert string to float: "
     "'high')."),
])
def test_a_damaged_trainer_state_is_one_error_line(tmp_path, content, problem):
    state = tmp_path / "trainer_state.json"
    state.write_text(content + "\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "alpaca_lib.training.lossplot", "--output_dir", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == "", result.stderr[-3000:]
    assert result.stderr.splitlines() == [f"error: {state}{problem} {FIX}"]
    assert not (tmp_path / PLOT_NAME).exists()
