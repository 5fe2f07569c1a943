"""`--config` files that would hang a run or change it silently are refused, through the command line.

    .venv/bin/python -m pytest tests/test_config_file_limits.py -q

An alias bomb ("billion laughs": nine levels of nine aliases, 387 million values once expanded) ends in one
`error:` line at once instead of minutes and gigabytes; so do a key given twice, a value nested too deeply,
and a folder passed as the file. The runs get a 6 GiB address-space limit, so that a regression fails instead
of filling the machine's memory.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

EVAL_MODEL = str(REPO_ROOT / "eval_model.py")


def _bomb(key: str) -> str:
    lines = [f"{key}:", '  - &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  - &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))


def _refused(cmd: list[str], cwd: Path, timeout: float) -> str:
    """Runs `cmd`, asserts that it exits 1 with one `error:` line (its last) and no traceback; returns that line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, preexec_fn=_limit_memory)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    return errors[0]


def test_train_py_refuses_an_alias_bomb_at_once(tmp_path):
    (tmp_path / "bomb.yaml").write_text(_bomb("report_to"))
    # The timeout is train.py's start-up (torch, transformers) on a busy machine; reading the bomb took minutes.
    line = _refused([sys.executable, str(REPO_ROOT / "train.py"), "--config", "bomb.yaml", "--output_dir", "out"],
                    tmp_path, timeout=60)
    assert line == ("error: --config bomb.yaml: line 3 uses the alias *a; a config file takes no aliases: "
                    "write the value out.")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    (_bomb("instructions_path"),
     "line 3 uses the alias *a; a config file takes no aliases: write the value out."),
    ("instructions_path: &self [*self]\n", "line 1 uses the alias *self; a config file takes no aliases: "
                                           "write the value out."),
    ("max_new_tokens: 64\noutput_path: o.json\nmax_new_tokens: 128\n",
     "key 'max_new_tokens' given twice (lines 1 and 3); keep one."),
    ("instructions_path:\n  a: 1\n  b: 2\n  a: 3\n", "key 'a' given twice (lines 2 and 4); keep one."),
    ("instructions_path: " + "[" * 5000 + "]" * 5000 + "\n",
     "values nested too deeply to read; a config file holds flags and their values."),
], ids=["alias bomb", "alias to itself", "flag given twice", "nested key given twice", "nested too deeply"])
def test_eval_outputs_refuses_a_config_that_is_unbounded_or_ambiguous(tmp_path, text, message):
    (tmp_path / "run.yaml").write_text(text)
    line = _refused([sys.executable, EVAL_MODEL, "outputs", "--config", "run.yaml", "--output_path", "out/o.json"],
                    tmp_path, timeout=30)
    assert line == f"error: --config run.yaml: {message}"
    assert not (tmp_path / "out").exists()


def test_a_folder_given_as_the_config_is_named_a_folder(tmp_path):
    (tmp_path / "configs").mkdir()
    line = _refused([sys.executable, EVAL_MODEL, "outputs", "--config", "configs", "--output_path", "out/o.json"],
                    tmp_path, timeout=30)
    assert line == (f"error: --config configs: a folder, not a file ({tmp_path / 'configs'}); pass one YAML file in "
                    "it (--config FOLDER/run.yaml).")
