"""The generator's guards, through its command line: output folders it cannot use, servers whose replies
are never usable (it stops by itself), replies too large to keep, and `~` in its paths.

    .venv/bin/python -m pytest tests/test_generate_guards.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, seed_task, write_seed_tasks
from openai_stub import OpenAIStub

GENERATE = [sys.executable, "-m", "generate_instruction", "generate_instruction_following_data"]


def _run(args: list[str], cwd: Path = REPO_ROOT, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*GENERATE, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def _last_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture
def seeds(tmp_path) -> Path:
    tasks = [seed_task(i, ins, "", "An output.") for i, ins in enumerate(
        ["Give three tips for staying healthy.", "Translate the sentence into French.",
         "Summarize the paragraph in one sentence.", "Explain why the sky is blue."])]
    return write_seed_tasks(tmp_path / "seeds.jsonl", tasks)


def test_an_output_dir_that_cannot_be_a_folder_is_one_error_line_and_creates_nothing(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    if os.geteuid() == 0:  # root writes through permission bits; a kernel file system refuses it too
        unwritable, shown, reason = "/sys/regen", "/sys", "Operation not permitted"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        unwritable, shown, reason = str(locked / "regen"), str(locked), "Permission denied"
    server = ["--base_url", "http://127.0.0.1:9/v1", "--api_key", "k"]  # never reached
    cases = [
        (str(taken), f"error: --output_dir {taken}: this is a file; pass a folder (it is created if it does not exist)."),
        (str(taken / "sub"), f"error: --output_dir {taken / 'sub'}: {taken} is a file, so no folder can be made under it."),
        (unwritable, f"error: --output_dir {unwritable}: cannot write in {shown} ({reason}). Pick a folder you can write to."),
    ]
    for output_dir, message in cases:
        assert _last_error(_run(["--output_dir", output_dir, *server])) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["taken"] + (["locked"] if os.geteuid() else []))
    assert taken.read_text() == "a file"


def test_tilde_in_the_generator_paths_means_the_home_folder(tmp_path, seeds):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    seeds.rename(home / "seeds.jsonl")
    (home / "prices.json").write_text(json.dumps({"stub-model": [1.0, 2.0]}))
    with OpenAIStub() as stub:
        proc = _run(["--output_dir", "~/runs/regen", "--seed_tasks_path", "~/seeds.jsonl", "--price_table",
                     "~/prices.json", "--prompt_path", "~/prompt.txt", "--num_instructions_to_generate", "3",
                     "--model_name", "stub-model", "--api_style", "completions", "--base_url", stub.base_url,
                     "--api_key", "k", "--request_batch_size", "1", "--num_cpus", "1", "--seed", "0"],
                    cwd=work, env={"HOME": str(home)})
        assert _last_error(proc) == f"error: meta-prompt {home}/prompt.txt not found; pass --prompt_path=FILE, or leave it out for the prompt.txt that ships next to generate_instruction.py"
        (home / "prompt.txt").write_text((REPO_ROOT / "prompt.txt").read_text())
        proc = _run(["--output_dir", "~/runs/regen", "--seed_tasks_path", "~/seeds.jsonl", "--price_table",
                     "~/prices.json", "--prompt_path", "~/prompt.txt", "--num_instructions_to_generate", "3",
                     "--model_name", "stub-model", "--api_style", "completions", "--base_url", stub.base_url,
                     "--api_key", "k", "--request_batch_size", "1", "--num_cpus", "1", "--seed", "0"],
                    cwd=work, env={"HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.listdir(work) == []
    assert len(json.loads((home / "runs" / "regen" / "regen.json").read_text())) >= 3
    summary = json.loads((home / "runs" / "regen" / "regen.journal.jsonl").read_text().splitlines()[-1])["summary"]
    assert summary["cost_usd"] == round((summary["prompt_tokens"] * 1.0 + summary["completion_tokens"] * 2.0) / 1e6, 6)
    proc = subprocess.run([sys.executable, "-m", "generate_instruction", "to_alpaca", "--input_path", "~/runs/regen",
                           "--output_path", "~/alpaca.json"], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "HOME": str(home)}, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((home / "alpaca.json").read_text()) == [
        {key: it[key] for key in ("instruction", "input", "output")}
        for it in json.loads((home / "runs" / "regen" / "regen.json").read_text())]
