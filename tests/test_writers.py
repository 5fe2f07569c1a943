"""What the commands' writers leave on disk: file permissions, `~` in path flags, full disks.

    .venv/bin/python -m pytest tests/test_writers.py -q
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_follow_the_umask(tmp_path, umask, expected):
    """Files written atomically (through a private temporary file) get what a plain open would give them."""
    items = [{"instruction": "Name a color.", "input": "", "output": "Blue."}]
    (tmp_path / "regen.json").write_text(json.dumps(items))
    proc = subprocess.run([sys.executable, "-m", "generate_instruction", "to_alpaca", "--input_path",
                           str(tmp_path / "regen.json"), "--output_path", str(tmp_path / "out" / "alpaca.json")],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
                          preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "alpaca.json").read_text()) == items
    assert _mode(tmp_path / "out" / "alpaca.json") == expected
    assert _mode(tmp_path / "out") == 0o777 & ~umask


def _home_and_runner(tmp_path):
    """A fresh $HOME and a working folder; `run(*argv)` runs Python there with that $HOME and returns stdout."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    home.mkdir()

    def run(*cmd: str) -> str:
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=work, timeout=300,
                              env={**os.environ, "HOME": str(home)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    return home, work, run


RECORDS = [{"instruction": f"Say {w}.", "input": "", "output": f"{w}!"} for w in ("hi", "bye")]


def test_tilde_in_data_and_evaluation_paths_means_the_home_folder(tmp_path):
    """prepare_data, eval_model outputs and judge read and write under $HOME for a `~/...` flag, and leave
    no folder named `~` behind (the generator's flags: test_generate_guards.py)."""
    from openai_stub import OpenAIStub, Step, chat_body

    home, work, run = _home_and_runner(tmp_path)
    (home / "data.json").write_text(json.dumps(RECORDS))
    run(str(REPO_ROOT / "prepare_data.py"), "convert", "--data_path", "~/data.json", "--output_path", "~/conv/a.json")
    assert json.loads((home / "conv" / "a.json").read_text()) == RECORDS
    with OpenAIStub(default=lambda req: Step(body=chat_body("a"))) as stub:
        run(str(REPO_ROOT / "eval_model.py"), "outputs", "--instructions_path", "~/data.json", "--output_path",
            "~/o/m.json", "--base_url", stub.base_url, "--model_name", "m", "--api_style", "chat")
        run(str(REPO_ROOT / "eval_model.py"), "judge", "--model_outputs", "~/o/m.json", "--reference_outputs",
            "~/data.json", "--judge_model", "j", "--output_dir", "~/j/r", "--base_url", stub.base_url, "--api_key", "k")
    assert [r["output"] for r in json.loads((home / "o" / "m.json").read_text())] == ["a", "a"]
    assert (home / "j" / "r" / "summary.json").is_file()
    assert os.listdir(work) == []


@pytest.mark.slow
def test_tilde_in_model_paths_means_the_home_folder(tmp_path, tiny_llama_dir):
    """infer and weight_diff (each loads a model: slow on 2 cores) read and write under $HOME for `~/...`."""
    import shutil

    from transformers import AutoTokenizer, LlamaForCausalLM

    from alpaca_lib.modeling import missing_special_tokens
    from train import smart_tokenizer_and_embedding_resize

    home, work, run = _home_and_runner(tmp_path)
    (home / "data.json").write_text(json.dumps(RECORDS))
    shutil.copytree(tiny_llama_dir, home / "model")
    tok, tuned = AutoTokenizer.from_pretrained(tiny_llama_dir), LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tok), tok, tuned)  # what train.py saves
    tuned.save_pretrained(home / "tuned")
    tok.save_pretrained(home / "tuned")
    out = run("-m", "alpaca_lib.infer", "--model_dir", "~/model", "--data_path", "~/data.json", "--num_examples", "1",
              "--max_new_tokens", "2")
    assert "### Instruction:\nSay hi." in out
    run(str(REPO_ROOT / "weight_diff.py"), "make_diff", "--path_raw", "~/model", "--path_tuned", "~/tuned",
        "--path_diff", "~/diff")
    run(str(REPO_ROOT / "weight_diff.py"), "recover", "--path_raw", "~/model", "--path_diff", "~/diff",
        "--path_tuned", "~/recovered")
    assert (home / "diff" / "config.json").is_file() and (home / "recovered" / "config.json").is_file()
    assert os.listdir(work) == []
