"""eval_model.py outputs / judge: mistakes refused in one line before anything loads, and a server that
echoes the prompt counted in one warning.

    bash scripts/test.sh tests/test_eval_guards.py

Every case runs the real script in a subprocess; servers are a scripted OpenAI-compatible stub on loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca_lib.core.prompt import format_prompt
from alpaca_lib.evaluation.outputs import echoed
from conftest import REPO_ROOT, run_script
from openai_stub import OpenAIStub, Request, Step, completion_body

EVAL_MODEL = str(REPO_ROOT / "eval_model.py")
CLOSED = "http://127.0.0.1:9/v1"  # nothing listens on the discard port: a request would fail, not hang


def _refused(cmd: list[str], cwd: Path) -> str:
    """Runs `cmd`, asserts that it exits 1 with one line on stderr and nothing on stdout; returns that line."""
    proc = subprocess.run([sys.executable, EVAL_MODEL, *cmd], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stdout + proc.stderr
    return proc.stderr.rstrip("\n")


def _pair_files(tmp_path: Path) -> list[str]:
    (tmp_path / "m.json").write_text(json.dumps([{"instruction": "x", "output": "1"}]))
    (tmp_path / "r.json").write_text(json.dumps([{"instruction": "x", "output": "2"}]))
    return ["--model_outputs", "m.json", "--reference_outputs", "r.json", "--output_dir", "out"]


@pytest.mark.parametrize("command, flag", [("judge", "--max_concurrency"), ("judge", "--judge_batch_size"),
                                           ("outputs", "--max_concurrency")])
def test_a_count_of_zero_is_refused_in_one_line_before_anything_runs(tmp_path, command, flag):
    if command == "judge":
        args = [*_pair_files(tmp_path), "--judge_model", "m", "--base_url", CLOSED]
    else:
        (tmp_path / "eval.json").write_text(json.dumps([{"instruction": "x"}]))
        args = ["--instructions_path", "eval.json", "--output_path", "out/o.json", "--base_url", CLOSED,
                "--model_name", "m"]
    line = _refused([command, *args, flag, "0"], tmp_path)
    assert line == f"error: {flag} must be a positive integer; got 0"
    assert not (tmp_path / "out").exists()


def test_a_local_judge_whose_tokenizer_cannot_spell_a_and_b_is_refused_before_the_model_loads(tmp_path):
    from alpaca_testkit.tiny import build_tokenizer, tiny_llama_config

    # No a or b in the corpus: each spelling of a letter is several byte-fallback tokens.
    tok = build_tokenizer(["hello world", "cdef ghij klmn", "xyz uvw"], vocab_size=300)
    assert all(len(tok.encode(s, add_special_tokens=False)) > 1 for s in ("a", "A", " a", " A", "b", "B", " b", " B"))
    judge = tmp_path / "judge"
    tok.save_pretrained(judge)
    tiny_llama_config(len(tok)).save_pretrained(judge)  # a config and no weights: loading the model would fail
    line = _refused(["judge", *_pair_files(tmp_path), "--judge_model_dir", "judge"], tmp_path)
    assert line == ("error: --judge_model_dir judge: its tokenizer has no single token for the letter a and another "
                    "for b (tried 'a', 'A', ' a', ' A', 'b', 'B', ' b', ' B'), so the in-process judge cannot read a "
                    "verdict from its next-token probabilities. Fix: pass another model as --judge_model_dir, or "
                    "serve this one and pass --judge_model with --base_url.")
    assert not (tmp_path / "out").exists()


def test_answers_that_echo_the_prompt_are_counted_in_one_warning(tmp_path):
    records = [{"instruction": f"Name {n} colors.", **({"input": "in German"} if n == 2 else {})} for n in range(1, 5)]
    (tmp_path / "eval.json").write_text(json.dumps(records))

    def echo(req: Request) -> Step:  # echoes the prompt, then goes on; but answers the third record
        prompt = req.body["prompt"]
        return Step(body=completion_body(["Three." if "Name 3" in prompt else prompt + " Red, blue."]))

    with OpenAIStub(default=echo) as stub:
        log = run_script([sys.executable, EVAL_MODEL, "outputs", "--instructions_path", "eval.json",
                          "--output_path", "o.json", "--base_url", stub.base_url, "--model_name", "m"], tmp_path)
    written = json.loads((tmp_path / "o.json").read_text())
    assert [w["output"] for w in written] == [
        (format_prompt(r) + " Red, blue.").strip() if r["instruction"] != "Name 3 colors." else "Three." for r in records]
    assert [line for line in log.splitlines() if "warning" in line] == [
        "warning: 3 of 4 answers in o.json repeat their prompt: the server echoes it (check its settings and "
        "--api_style). They are written as received; to ask again, delete o.json and o.journal.jsonl."]
    assert "wrote 4 outputs of m to o.json" in log


def test_an_echo_is_a_prompt_repeated_past_its_instruction():
    prompt = format_prompt({"instruction": "Name colors."})
    cut = prompt.index("Name colors.")
    assert echoed(prompt.strip(), prompt, "Name colors.") and echoed(prompt.strip() + " Red.", prompt, "Name colors.")
    assert echoed(prompt[:cut + len("Name colors.")], prompt, "Name colors.")  # an echo cut short by the budget
    assert not echoed(prompt[:cut + 4], prompt, "Name colors.")  # the template's opening only
    assert not echoed("Red, blue and green.", prompt, "Name colors.") and not echoed("", prompt, "Name colors.")
