"""A model folder whose weights are cut short: every command that loads it says so in one line, writes nothing.

    .venv/bin/python -m pytest tests/test_damaged_weights.py -q

The tiny LLaMA (`tiny_llama_dir`) copied, its model.safetensors cut short by 100 bytes (`truncate -s -100`, as an
interrupted copy or download leaves it), handed to train.py, `eval_model.py outputs`, `chat` and the in-process
judge: each exits 1 with one `error:` line naming the file and the fix (alpaca_lib/core/weightfiles.py), no
safetensors traceback. weight_diff.py's own cases are in test_weight_diff.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, write_alpaca_subset

TRAIN = str(REPO_ROOT / "train.py")
EVAL_MODEL = str(REPO_ROOT / "eval_model.py")


@pytest.fixture(scope="module")
def cut_model(tiny_llama_dir, tmp_path_factory) -> tuple[Path, Path, int]:
    """(the copied folder, its model.safetensors, that file's size before the cut)."""
    model = tmp_path_factory.mktemp("damaged") / "cut-model"
    shutil.copytree(tiny_llama_dir, model)
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size - 100)
    return model, weights, size


def _expected(flag: str, cut_model) -> str:
    model, weights, size = cut_model
    return (f"error: {flag} {model}: {weights}: cut short: its header describes {size} bytes, the file has "
            f"{size - 100}; re-download or re-create it")


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _refused(cmd: list, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    """Runs `cmd` in `cwd`, asserts exit status 1 with no traceback and that `cwd` holds what it held before."""
    before = _tree(cwd)
    proc = subprocess.run([str(c) for c in cmd], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _tree(cwd) == before  # nothing written: no output folder, file, lock or temp file
    return proc


def test_train_refuses_a_cut_short_base_model_in_one_line(cut_model, tmp_path):
    """A fresh run: the check comes just before the model loads (after the start plan and every other refusal),
    and the --output_dir that run created is removed again, as for any error at that point."""
    write_alpaca_subset(tmp_path / "data.json", slice(4))
    out = tmp_path / "out"
    proc = _refused([sys.executable, TRAIN, "--model_name_or_path", cut_model[0], "--data_path", "data.json",
                     "--output_dir", out, "--max_steps", "1", "--report_to", "none",
                     "--preprocessing_cache_dir", tmp_path / "cache"], tmp_path)
    assert proc.stderr.splitlines()[-1] == _expected("--model_name_or_path", cut_model)
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_outputs_refuses_a_cut_short_model_in_one_line(cut_model, tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps([{"instruction": "Say hi.", "input": ""}]), encoding="utf-8")
    proc = _refused([sys.executable, EVAL_MODEL, "outputs", "--model_dir", cut_model[0], "--instructions_path",
                     "eval.json", "--output_path", tmp_path / "run" / "model_outputs.json", "--max_new_tokens", "4"],
                    tmp_path)
    assert proc.stderr.splitlines()[-1] == _expected("--model_dir", cut_model)
    assert proc.stdout == ""


def test_chat_refuses_a_cut_short_model_in_one_line(cut_model, tmp_path):
    proc = _refused([sys.executable, EVAL_MODEL, "chat", "--model_dir", cut_model[0], "--max_new_tokens", "4"],
                    tmp_path, stdin="Say hi.\n\n")
    assert proc.stderr.splitlines()[-1] == _expected("--model_dir", cut_model)
    assert "Alpaca chat" not in proc.stderr and proc.stdout == ""


def test_the_in_process_judge_refuses_a_cut_short_model_in_one_line(cut_model, tmp_path):
    rows = [{"instruction": "Say hi.", "output": "hi", "generator": "m"}]
    (tmp_path / "m.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "r.json").write_text(json.dumps([dict(rows[0], output="hello", generator="r")]), encoding="utf-8")
    proc = _refused([sys.executable, EVAL_MODEL, "judge", "--model_outputs", "m.json", "--reference_outputs", "r.json",
                     "--judge_model_dir", cut_model[0], "--output_dir", tmp_path / "judge",
                     "--leaderboard", tmp_path / "board.csv"], tmp_path)
    assert proc.stderr.splitlines()[-1] == _expected("--judge_model_dir", cut_model)
    assert proc.stdout == ""
