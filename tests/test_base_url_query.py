"""A server address with a query (`--base_url http://host:port/v1?token=...`): requests keep the query, output hides it.

    .venv/bin/python -m pytest tests/test_base_url_query.py -q

Each command runs as a user runs it against a loopback server; the server must see `/v1/<endpoint>?token=...`
(not the endpoint appended after the query), and nothing printed or written may hold the token.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca_lib.core.errors import UsageError
from alpaca_lib.generation.accounting import format_summary
from alpaca_lib.llm.client import CompletionClient
from conftest import REPO_ROOT
from openai_stub import OpenAIStub, Request, Step, chat_body, completion_body

TOKEN = "SECRET-TOKEN-4321"
EVAL_MODEL = str(REPO_ROOT / "eval_model.py")


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def _files_holding_the_token(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


def test_generate_sends_the_query_after_the_endpoint_and_prints_no_token(tmp_path):
    out = tmp_path / "regen"
    with OpenAIStub() as stub:
        proc = _run([sys.executable, "-m", "generate_instruction", "generate_instruction_following_data",
                     "--output_dir", str(out), "--base_url", f"{stub.base_url}?token={TOKEN}",
                     "--model_name", "stub-model", "--api_style", "completions", "--num_instructions_to_generate", "3",
                     "--request_batch_size", "1", "--num_cpus", "1", "--seed", "0"], REPO_ROOT)
        paths = [r.path for r in stub.requests]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert paths and set(paths) == {f"/v1/completions?token={TOKEN}"}
    assert TOKEN not in proc.stdout + proc.stderr
    assert f"cost: none (a server on this machine, {stub.base_url}?token=***)\n" in proc.stdout
    assert _files_holding_the_token(out) == []


def test_eval_outputs_sends_the_query_after_the_endpoint_and_prints_no_token(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps([{"instruction": "Say hi."}, {"instruction": "Say bye."}]))
    out = tmp_path / "o" / "m.json"
    with OpenAIStub(default=lambda req: Step(body=completion_body([" hello"]))) as stub:
        proc = _run([sys.executable, EVAL_MODEL, "outputs", "--instructions_path", str(tmp_path / "eval.json"),
                     "--output_path", str(out), "--base_url", f"{stub.base_url}?token={TOKEN}&v=2",
                     "--model_name", "m", "--api_style", "completions", "--max_concurrency", "1"], tmp_path)
        paths = [r.path for r in stub.requests]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert paths == [f"/v1/completions?token={TOKEN}&v=2"] * 2
    assert [r["output"] for r in json.loads(out.read_text())] == ["hello", "hello"]
    assert TOKEN not in proc.stdout + proc.stderr
    assert _files_holding_the_token(tmp_path) == []


def test_judge_sends_the_query_after_the_endpoint_and_prints_no_token(tmp_path):
    records = [{"instruction": f"Say {w}.", "output": f"{w}!"} for w in ("hi", "bye")]
    (tmp_path / "ref.json").write_text(json.dumps(records))
    (tmp_path / "model.json").write_text(json.dumps([{**r, "generator": "m"} for r in records]))

    def answer(req: Request) -> Step:
        return Step(body=chat_body("a"))

    with OpenAIStub(default=answer) as stub:
        proc = _run([sys.executable, EVAL_MODEL, "judge", "--model_outputs", str(tmp_path / "model.json"),
                     "--reference_outputs", str(tmp_path / "ref.json"), "--judge_model", "judge",
                     "--output_dir", str(tmp_path / "j" / "r"), "--base_url", f"{stub.base_url}?token={TOKEN}",
                     "--leaderboard", str(tmp_path / "j" / "leaderboard.csv")], tmp_path)
        paths = {r.path for r in stub.requests}
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert paths == {f"/v1/chat/completions?token={TOKEN}"}
    assert TOKEN not in proc.stdout + proc.stderr
    assert _files_holding_the_token(tmp_path) == []


def test_client_error_messages_show_the_query_redacted():
    client = CompletionClient("m", base_url=f"http://127.0.0.1:9/v1?token={TOKEN}&debug", api_key="k")
    assert client.base_url == "http://127.0.0.1:9/v1/?token=***&debug"
    with pytest.raises(UsageError) as e:
        CompletionClient("m", base_url=f"http://127.0.0.1:9/v1?token={TOKEN}&token=b", api_key="k")
    assert str(e.value) == ("--base_url http://127.0.0.1:9/v1?token=***&token=***: the query gives token more than "
                            "once; keep one value of each")


def test_cost_line_redacts_the_address():
    summary = {"requests": 1, "retries": 0, "prompts": 1, "raw_items": 0, "kept": 0, "kept_ratio": 0.0,
               "discarded": {}, "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "cost_usd": None,
               "unpriced_models": ["m"]}
    text = format_summary(summary, f"http://alice:pw@127.0.0.1:8000/v1?token={TOKEN}")
    assert text.splitlines()[-1] == "cost: none (a server on this machine, http://127.0.0.1:8000/v1?token=***)"
