"""No API key or password in a server address is ever written to a file a run leaves behind.

    bash scripts/test.sh tests/test_secrets.py

Each command runs against a loopback server whose address carries a password, with an API key; then
every file in its output folder (journals, outputs, summaries, reports) is searched for both.
"""

from __future__ import annotations

import json
from pathlib import Path

import eval_model
from alpaca_lib.generation.export import export_alpaca
from alpaca_lib.generation.runner import GenerateConfig, run_generation
from alpaca_lib.llm.client import redact_url
from conftest import REPO_ROOT
from openai_stub import OpenAIStub, Request, Step, chat_body

KEY, PASSWORD = "sk-CANARY-KEY-1234", "CANARY-PASSWORD-5678"


def _with_password(base_url: str) -> str:
    return base_url.replace("http://", f"http://alice:{PASSWORD}@")


def _files_holding_a_secret(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file()
            and (KEY.encode() in p.read_bytes() or PASSWORD.encode() in p.read_bytes())]


def test_redact_url_cuts_only_the_credentials():
    assert redact_url(f"http://alice:{PASSWORD}@127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert redact_url("https://api.example.com/v1") == "https://api.example.com/v1"
    assert redact_url(None) is None


def test_redact_url_hides_query_values():
    assert redact_url(f"https://bob:{PASSWORD}@proxy.example.com/v1/?token={KEY}&api-version=2024-06-01&debug") == (
        "https://proxy.example.com/v1/?token=***&api-version=***&debug")


def test_a_token_in_the_address_is_not_printed_in_errors(tmp_path):
    import subprocess
    import sys

    from openai_stub import error

    with OpenAIStub([error(401, "bad key")]) as stub:
        proc = subprocess.run(
            [sys.executable, "-m", "generate_instruction", "generate_instruction_following_data", "--output_dir",
             str(tmp_path / "regen"), "--base_url", f"{stub.base_url}?token={KEY}", "--api_key", "k",
             "--model_name", "stub-model", "--api_style", "completions", "--num_instructions_to_generate", "1",
             "--request_batch_size", "1", "--seed", "0"],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 1 and KEY not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {stub.base_url}/?token=*** refused the API key (401): set OPENAI_API_KEY or --api_key")
    assert _files_holding_a_secret(tmp_path) == []


def test_generation_journal_and_exports_hold_no_secret(tmp_path):
    out = tmp_path / "regen"
    with OpenAIStub() as stub:
        cfg = GenerateConfig(output_dir=str(out), seed_tasks_path=str(REPO_ROOT / "seed_tasks.jsonl"),
                             num_instructions_to_generate=5, model_name="stub-model", api_style="completions",
                             base_url=_with_password(stub.base_url), api_key=KEY, request_batch_size=2,
                             num_cpus=1, seed=1, backoff_s=0.01, save_every_s=0)
        run_generation(cfg, progress=False)
        assert stub.requests[0].headers["authorization"]  # credentials were sent (as HTTP basic auth here)
    export_alpaca(out, out / "alpaca.json")
    start = json.loads((out / "regen.journal.jsonl").read_text().splitlines()[0])
    assert start["settings"]["base_url"] == stub.base_url and "api_key" not in start["settings"]
    assert len(list(out.iterdir())) == 3 and _files_holding_a_secret(out) == []


def test_outputs_and_judge_files_hold_no_secret(tmp_path):
    records = [{"instruction": f"Say {w}.", "output": f"{w}!"} for w in ("hi", "bye")]
    (tmp_path / "eval.json").write_text(json.dumps(records))

    def answer(req: Request) -> Step:
        return Step(body=chat_body("a"))

    with OpenAIStub(default=answer) as stub:
        url = _with_password(stub.base_url)
        eval_model.outputs(instructions_path=str(tmp_path / "eval.json"), output_path=str(tmp_path / "o" / "m.json"),
                           base_url=url, model_name="m", api_key=KEY, api_style="chat")
        eval_model.judge(model_outputs=str(tmp_path / "o" / "m.json"), reference_outputs=str(tmp_path / "eval.json"),
                         judge_model="judge", output_dir=str(tmp_path / "j" / "r"), base_url=url, api_key=KEY,
                         leaderboard=str(tmp_path / "j" / "leaderboard.csv"))
    written = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert {"m.json", "m.journal.jsonl", "summary.json", "annotations.json", "report.md", "judge.png",
            "judge.journal.jsonl", "leaderboard.csv"} <= set(written)
    assert _files_holding_a_secret(tmp_path) == []
