"""eval_model.py judge: pairing, both orders, ties, unreadable replies, logprob weighting, resume, faults.

    bash scripts/test.sh tests/test_judge.py

The judge is a scripted OpenAI-compatible server on loopback. It prefers the output that contains
"GOOD"; when neither or both do, it always names the first position (a position bias the both-orders
rule must turn into a tie); for a request that contains "UNREADABLE" it never names a letter.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import eval_model
from alpaca_lib.judge import JOURNAL_NAME, length_controlled_win_rate, read_verdict
from conftest import REPO_ROOT, kill_when_journaled, run_script
from openai_stub import OpenAIStub, Request, Step, chat_body, error

EVAL_MODEL = str(REPO_ROOT / "eval_model.py")


def _judge(logprob_winner: float | None = None, delay_s: float = 0.0):
    def answer(req: Request) -> Step:
        text = req.body["messages"][-1]["content"]
        out_a = text.split("## Output (a)")[1].split("## Output (b)")[0]
        out_b = text.split("## Output (b)")[1].split("Decide which")[0]
        if "UNREADABLE" in text:
            return Step(body=chat_body("I cannot decide between them."), delay_s=delay_s)
        good_a, good_b = "GOOD" in out_a, "GOOD" in out_b
        letter = "b" if good_b and not good_a else "a"
        body = chat_body(letter)
        if logprob_winner is not None:
            p = logprob_winner if good_a != good_b else 0.7  # a clear pick, or the position bias
            lp = {letter: math.log(p), ("b" if letter == "a" else "a"): math.log(1 - p)}
            body["choices"][0]["logprobs"] = {"content": [{
                "token": letter, "logprob": lp[letter], "bytes": None,
                "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in lp.items()]}]}
        return Step(body=body, delay_s=delay_s)
    return answer


def _files(tmp_path: Path):
    model, reference = [], []
    for i in range(3):  # the model wins
        model.append({"instruction": f"win {i}", "output": f"GOOD answer {i}", "generator": "tuned"})
        reference.append({"instruction": f"win {i}", "output": f"weak answer {i}", "generator": "base"})
    model.append({"instruction": "lose", "output": "weak", "generator": "tuned"})
    reference.append({"instruction": "lose", "output": "GOOD and longer answer", "generator": "base"})
    for i in range(2):  # neither is better: the judge's position bias decides, so the orders disagree
        model.append({"instruction": f"tie {i}", "input": "some input", "output": "plain", "generator": "tuned"})
        reference.append({"instruction": f"tie {i}", "input": "some input", "output": "plain too", "generator": "base"})
    model.append({"instruction": "UNREADABLE case", "output": "x", "generator": "tuned"})
    reference.append({"instruction": "UNREADABLE case", "output": "y", "generator": "base"})
    model.append({"instruction": "only in the model file", "output": "z", "generator": "tuned"})
    reference.append({"instruction": "only in the reference file", "output": "z", "generator": "base"})
    model.append({"instruction": "twice in the reference", "output": "GOOD", "generator": "tuned"})
    reference += [{"instruction": "twice in the reference", "output": "a", "generator": "base"}] * 2
    (tmp_path / "model.json").write_text(json.dumps(model))
    (tmp_path / "ref.json").write_text(json.dumps(reference))
    return tmp_path / "model.json", tmp_path / "ref.json"


def test_win_rate_counts_both_orders_ties_and_unreadable_pairs(tmp_path, capsys):
    model, ref = _files(tmp_path)
    out = tmp_path / "judge" / "tuned_vs_base"
    with OpenAIStub(default=_judge()) as stub:
        eval_model.judge(str(model), str(ref), "judge-m", str(out), base_url=stub.base_url)
        n_requests = len(stub.requests)
    assert n_requests == 6 * 2 + 2 * 3  # 6 readable pairs in both orders; the unreadable one asked 3 times each
    printed = capsys.readouterr().out
    assert ("pairing: 1 instruction(s) only in --model_outputs, left out (first: 'only in the model file'). "
            "1 instruction(s) only in --reference_outputs, left out (first: 'only in the reference file'). "
            "1 instruction(s) more than once in a file, left out (first: 'twice in the reference')") in printed
    summary = json.loads((out / "summary.json").read_text())
    prefs = [1, 1, 1, 0, 0.5, 0.5]
    assert summary["win_rate"] == pytest.approx(100 * np.mean(prefs))
    assert summary["standard_error"] == pytest.approx(100 * np.std(prefs, ddof=1) / math.sqrt(6))
    assert (summary["n_pairs"], summary["n_wins"], summary["n_losses"], summary["n_ties"], summary["n_unreadable"]) \
        == (6, 3, 1, 2, 1)
    assert summary["weighting"] == "discrete"
    assert (summary["model"], summary["reference"], summary["judge_model"]) == ("tuned", "base", "judge-m")
    assert summary["prompt_version"] == "pairwise-v1" and summary["length_controlled_win_rate"] is None  # < 10 pairs
    assert summary["avg_length_model"] == pytest.approx(np.mean([len(f"GOOD answer {i}") for i in range(3)] + [4, 5, 5]))
    assert summary["usage"]["total_tokens"] == 18 * 30  # the stub reports 10 + 20 tokens per request
    annotations = json.loads((out / "annotations.json").read_text())
    assert len(annotations) == 7
    tie = next(a for a in annotations if a["instruction"] == "tie 0")
    assert tie["letters"] == ["a", "a"] and tie["model_won"] == [1, 0] and tie["input"] == "some input"
    unreadable = next(a for a in annotations if a["instruction"] == "UNREADABLE case")
    assert unreadable["letters"] == [None, None] and unreadable["replies"][0] == "I cannot decide between them."
    with open(out.parent / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["reference"], r["judge_model"]) for r in rows] == [("tuned", "base", "judge-m")]
    assert rows[0]["win_rate"] == f"{summary['win_rate']:.2f}" == "66.67"
    report = (out / "report.md").read_text()
    assert "# tuned vs base" in report and "**66.7%**" in report and "## Where the model lost most clearly" in report
    assert "### lose" in report and "![win rates and output lengths](judge.png)" in report
    assert (out / "judge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logprobs_weight_each_verdict_by_the_judges_probability(tmp_path):
    model, ref = _files(tmp_path)
    out = tmp_path / "judge" / "lp"
    with OpenAIStub(default=_judge(logprob_winner=0.9)) as stub:
        eval_model.judge(str(model), str(ref), "judge-m", str(out), base_url=stub.base_url)
        assert all(r.body["logprobs"] is True and r.body["top_logprobs"] == 5 for r in stub.requests)
    summary = json.loads((out / "summary.json").read_text())
    # wins: 0.9 in both orders; the loss: 0.1; the ties: 0.7 for the model in one order, 0.3 in the other.
    assert summary["weighting"] == "logprobs"
    assert summary["win_rate"] == pytest.approx(100 * (3 * 0.9 + 0.1 + 2 * 0.5) / 6)
    assert (summary["n_wins"], summary["n_losses"], summary["n_ties"]) == (3, 1, 2)


def test_killed_judge_resumes_without_paying_twice_and_refuses_another_judge(tmp_path):
    model, ref = _files(tmp_path)
    out = tmp_path / "judge" / "resumed"
    cmd = [sys.executable, EVAL_MODEL, "judge", "--model_outputs", str(model), "--reference_outputs", str(ref),
           "--judge_model", "judge-m", "--output_dir", str(out), "--max_concurrency", "1"]
    journal = out / JOURNAL_NAME
    with OpenAIStub(default=_judge(delay_s=0.1)) as stub:
        kill_when_journaled([*cmd, "--base_url", stub.base_url], tmp_path, journal, '"t": "verdict"', 5)
        first = len(stub.requests)
        verdicts = [json.loads(line) for line in journal.read_text().splitlines() if '"t": "verdict"' in line]
        assert 5 <= len(verdicts) < 14 and not (out / "summary.json").exists()
        log = run_script([*cmd, "--base_url", stub.base_url], tmp_path)
        # The resumed run asked only for the verdicts the journal lacked: all 18 requests, less those paid for.
        assert len(stub.requests) - first == 18 - sum(v["attempts"] for v in verdicts)
        assert "win rate of tuned vs base: 66.7%" in log
        err = run_script([*cmd, "--base_url", stub.base_url, "--judge_model", "other"], tmp_path, expect=1)
    assert f"error: {journal} belongs to another judging run (judge_model was 'judge-m', now 'other')." in err


def test_judge_survives_server_faults(tmp_path):
    model, ref = _files(tmp_path)
    script = [error(429, "slow down", headers={"retry-after": "0"}), error(500, "boom"), error(503, "busy"),
              Step(body=chat_body("a"), delay_s=5.0)]  # answered after --request_timeout: retried
    with OpenAIStub(script=script, default=_judge()) as stub:
        eval_model.judge(str(model), str(ref), "judge-m", str(tmp_path / "j" / "f"), base_url=stub.base_url,
                         max_concurrency=1, request_timeout=0.5, max_retries=4)
        assert len(stub.requests) == 18 + 4
    assert json.loads((tmp_path / "j" / "f" / "summary.json").read_text())["n_pairs"] == 6


def test_files_with_nothing_in_common_are_refused(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "x", "output": "1"}]))
    (tmp_path / "b.json").write_text(json.dumps([{"instruction": "y", "output": "2"}]))
    err = run_script([sys.executable, EVAL_MODEL, "judge", "--model_outputs", "a.json", "--reference_outputs", "b.json",
                      "--judge_model", "m", "--output_dir", "out", "--base_url", "http://127.0.0.1:9/v1"],
                     tmp_path, expect=1)
    assert "error: a.json and b.json share no instruction: nothing to judge." in err and "Traceback" not in err


def test_verdict_reading_and_length_control():
    assert [read_verdict(t) for t in ["a", " B", "(b)", "Output a.", "**a**", "b is better", "neither", "ab", ""]] \
        == ["a", "b", "b", "a", "a", "b", None, None, None]
    d = np.linspace(-100, 100, 20)
    # Symmetric data decided by length alone: 50% either way.
    assert length_controlled_win_rate((d > 0).astype(float), 500 + d, [500] * 20) == pytest.approx(50.0, abs=1e-6)
    # The model wins exactly when it is longer, and it is longer in 15 of 20 pairs: the raw rate is 75%,
    # the length-controlled one near even (58.3%: the fit's boundary sits near, not at, equal lengths).
    d = np.linspace(-50, 150, 20)
    prefs = (d > 0).astype(float)
    assert prefs.mean() == 0.75
    assert length_controlled_win_rate(prefs, 500 + d, [500] * 20) == pytest.approx(58.33, abs=0.01)
    assert length_controlled_win_rate([1.0] * 9, [1] * 9, [1] * 9) is None
