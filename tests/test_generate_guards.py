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


def _generate_args(out: Path, seeds: Path, stub: OpenAIStub, *extra: str) -> list[str]:
    return ["--output_dir", str(out), "--seed_tasks_path", str(seeds), "--num_instructions_to_generate", "10",
            "--model_name", "stub-model", "--api_style", "completions", "--base_url", stub.base_url, "--api_key", "k",
            "--request_batch_size", "2", "--num_cpus", "1", "--seed", "0", "--price_table", '{"stub-model": [1, 2]}',
            *extra]


def _journal(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "regen.journal.jsonl").read_text().splitlines()]


def test_a_server_that_echoes_the_prompt_stops_the_run_after_max_empty_batches(tmp_path, seeds):
    """Every reply is the prompt itself: nothing is kept, and the run stops after 3 batches (6 requests)
    with what was dropped and spent, instead of asking forever."""
    from openai_stub import completion

    def echo(req):
        return completion([req.body["prompt"]], prompt_tokens=10, completion_tokens=20)

    out = tmp_path / "regen"
    with OpenAIStub(default=echo) as stub:
        proc = _run(_generate_args(out, seeds, stub, "--max_empty_batches", "3"))
        assert len(stub.requests) == 6
    # Each echo parses into 5 pieces, none an item: the meta-prompt, the 3 examples (numbered 1-3, not 4+)
    # and the closing "4. Instruction:".
    assert _last_error(proc) == (
        f"error: stopped: the last 3 batches (6 prompts) kept nothing; dropped: malformed 30. Spent so far: 6 "
        f"requests, 180 tokens, $0.0003 (estimate from the price table). The replies are in {out}/regen.journal.jsonl "
        "(its \"request\" lines): check the server, --model_name, --api_style and --prompt_path, then re-run the same "
        "command to go on (--max_empty_batches sets how many batches in a row may keep nothing).")
    records = _journal(out)
    assert [r["t"] for r in records] == ["start"] + ["request", "request", "batch"] * 3 + ["end"]
    assert records[-1]["summary"]["discarded"]["malformed"] == 30
    assert json.loads((out / "regen.json").read_text()) == []


def test_max_empty_batches_counts_batches_in_a_row(tmp_path, seeds):
    """A batch that keeps something starts the count afresh."""
    from openai_stub import completion, fake_model

    replies = iter(["echo", "echo", "model", "model", "echo", "echo", "echo", "echo"])

    def sometimes_echo(req):
        return completion([req.body["prompt"]]) if next(replies) == "echo" else fake_model(req)

    out = tmp_path / "regen"
    with OpenAIStub(default=sometimes_echo) as stub:
        proc = _run(_generate_args(out, seeds, stub, "--max_empty_batches", "2", "--num_instructions_to_generate",
                                   "100"))
        assert len(stub.requests) == 8
    assert _last_error(proc).startswith("error: stopped: the last 2 batches (4 prompts) kept nothing; dropped: malformed 20.")
    assert [r["kept"] > 0 for r in _journal(out) if r["t"] == "batch"] == [False, True, False, False]


def test_oversized_replies_are_counted_and_journaled_cut_short(tmp_path, seeds):
    """Replies of 5 MB (cut off by the client) and of 6,000 characters (over --max_reply_chars 5000): each is a
    counted rejection, the journal keeps its first 1,000 characters and its size, and a resumed batch reads
    them back as oversized."""
    from openai_stub import Step, completion, completion_body

    huge = completion_body(["x" * (5 * 2**20)])
    script = [Step(body=huge), Step(body=huge)]
    out = tmp_path / "regen"
    with OpenAIStub(script, default=lambda req: completion(["y" * 6000])) as stub:
        proc = _run(_generate_args(out, seeds, stub, "--max_empty_batches", "2", "--max_reply_chars", "5000"))
    assert _last_error(proc).startswith("error: stopped: the last 2 batches (4 prompts) kept nothing; dropped: oversized 4.")
    requests = [r for r in _journal(out) if r["t"] == "request"]
    huge_size = len(json.dumps(huge))
    assert sorted((c["size"], c["text"][:3], len(c["text"])) for r in requests for c in r["choices"]) == [
        (6000, "yyy", 1000), (6000, "yyy", 1000), (huge_size, '{"i', 1000), (huge_size, '{"i', 1000)]
    assert (out / "regen.journal.jsonl").stat().st_size < 12_000
    from alpaca_lib.core.rouge import RougeLPool
    from alpaca_lib.generation.batch import decide_batch
    from alpaca_lib.generation.journal import read_journal

    state = read_journal(out / "regen.journal.jsonl")
    assert state.next_batch == 2 and state.batches[-1]["discarded"]["oversized"] == 2
    # Killed before the second batch was decided, a rerun reads its replies back as oversized too.
    lines = (out / "regen.journal.jsonl").read_text().splitlines(keepends=True)
    (out / "regen.journal.jsonl").write_text("".join(lines[:-2]))  # without the last "batch" and the "end"
    state = read_journal(out / "regen.journal.jsonl")
    assert state.next_batch == 1 and sorted(r["size"] for r in state.pending.values()) == [6000, 6000]
    decision = decide_batch(state.pending, 3, False, RougeLPool(["Explain why the sky is blue."], workers=1))
    assert (decision.kept, dict(decision.discarded), decision.raw_items) == ([], {"oversized": 2}, 2)
