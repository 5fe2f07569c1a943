"""eval_model.py judge and score: pairing, both orders, AlpacaEval's numbers, replies read as written,
recovery from unreadable verdicts, diagnostics, the leaderboard, the in-process judge, resume, faults.

    bash scripts/test.sh tests/test_judge.py

The judge is a scripted OpenAI-compatible server on loopback. By default it prefers the output that
contains "GOOD"; when neither or both do, it names the first position (a position bias the both-orders
rule turns into a tie); for a request that contains "UNREADABLE" it never names a letter. Every number is
checked against `alpaca_eval.metrics` run by the test on a frame it builds itself.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_metrics import plant_df_gamed

import eval_model
from alpaca_lib.evaluation.judge import JOURNAL_NAME
from alpaca_lib.evaluation.judges import judge_prompt
from alpaca_lib.evaluation.provenance import model_source
from alpaca_lib.evaluation.settings import journal_path
from alpaca_lib.training.checkpoints import write_manifest
from alpaca_lib.training.start import mark_finished
from conftest import REPO_ROOT, kill_when_journaled, run_script
from openai_stub import OpenAIStub, Request, Step, chat_body, error

EVAL_MODEL = str(REPO_ROOT / "eval_model.py")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn, on AlpacaEval's own calls


def _outputs_of(text: str) -> tuple[str, str]:
    out_a = text.split("## Output (a)")[1].split("## Output (b)")[0]
    out_b = text.split("## Output (b)")[1].split("Decide which")[0]
    return out_a, out_b


def _judge(logprob_winner: float | None = None, delay_s: float = 0.0, prefer=None, unreadable: str = "UNREADABLE"):
    """The scripted judge; `prefer(out_a, out_b)` may replace the "GOOD" rule (returns "a" or "b")."""
    def answer(req: Request) -> Step:
        text = req.body["messages"][-1]["content"]
        out_a, out_b = _outputs_of(text)
        if unreadable in text:
            return Step(body=chat_body("I cannot decide between them."), delay_s=delay_s)
        good_a, good_b = "GOOD" in out_a, "GOOD" in out_b
        letter = prefer(out_a, out_b) if prefer else ("b" if good_b and not good_a else "a")
        body = chat_body(letter)
        if logprob_winner is not None:
            p = logprob_winner if good_a != good_b else 0.7  # a clear pick, or the position bias
            lp = {letter: math.log(p), ("b" if letter == "a" else "a"): math.log(1 - p)}
            body["choices"][0]["logprobs"] = {"content": [{
                "token": letter, "logprob": lp[letter], "bytes": None,
                "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in lp.items()]}]}
        return Step(body=body, delay_s=delay_s)
    return answer


def _files(tmp_path: Path, model_name: str = "tuned", suffix: str = ""):
    model, reference = [], []
    for i in range(3):  # the model wins
        model.append({"instruction": f"win {i}", "output": f"GOOD answer {i}{suffix}", "generator": model_name})
        reference.append({"instruction": f"win {i}", "output": f"weak answer {i}", "generator": "base"})
    model.append({"instruction": "lose", "output": "weak", "generator": model_name})
    reference.append({"instruction": "lose", "output": "GOOD and longer answer", "generator": "base"})
    for i in range(2):  # neither is better: the judge's position bias decides, so the orders disagree
        model.append({"instruction": f"tie {i}", "input": "some input", "output": "plain", "generator": model_name})
        # The reference file of the second keeps the input in the instruction, as AlpacaEval's data does: it pairs.
        reference.append({"instruction": f"tie {i}", "input": "some input", "output": "plain too", "generator": "base"}
                         if i == 0 else {"instruction": f"tie {i}\n\nsome input", "output": "plain too", "generator": "base"})
    model.append({"instruction": "UNREADABLE case", "output": "x", "generator": model_name})
    reference.append({"instruction": "UNREADABLE case", "output": "y", "generator": "base"})
    model.append({"instruction": "only in the model file", "output": "z", "generator": model_name})
    reference.append({"instruction": "only in the reference file", "output": "z", "generator": "base"})
    model.append({"instruction": "twice in the reference", "output": "GOOD", "generator": model_name})
    reference += [{"instruction": "twice in the reference", "output": "a", "generator": "base"}] * 2
    (tmp_path / f"model{suffix}.json").write_text(json.dumps(model))
    (tmp_path / "ref.json").write_text(json.dumps(reference))
    return tmp_path / f"model{suffix}.json", tmp_path / "ref.json"


def _frame(preferences, len_ref=None, len_model=None) -> pd.DataFrame:
    """AlpacaEval's annotation frame for the test's own expectation."""
    n = len(preferences)
    len_ref, len_model = len_ref or [1] * n, len_model or [1] * n
    return pd.DataFrame({"output_1": ["r" * k for k in len_ref], "output_2": ["m" * k for k in len_model],
                         "generator_1": "base", "generator_2": "tuned", "annotator": "j",
                         "preference": np.array(preferences, dtype=float)})


def _alpaca_eval_winrate(preferences) -> dict:
    from alpaca_eval.metrics import get_winrate

    return get_winrate(_frame(preferences))


AE_KEYS = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "discrete_win_rate")


def _judge_in_process(model, ref, out, stub, board, **kw):
    eval_model.judge(model_outputs=str(model), reference_outputs=str(ref), output_dir=str(out), judge_model="judge-m",
                     base_url=stub.base_url, leaderboard=str(board), **kw)
    return json.loads((out / "summary.json").read_text())


def test_win_rate_counts_both_orders_ties_and_unreadable_pairs(tmp_path, capsys):
    model, ref = _files(tmp_path)
    out, board = tmp_path / "judge" / "tuned_vs_base", tmp_path / "board.csv"
    with OpenAIStub(default=_judge()) as stub:
        summary = _judge_in_process(model, ref, out, stub, board)
        requests = list(stub.requests)
    assert len(requests) == 6 * 2 + 2 * 3  # 6 readable pairs in both orders; the unreadable one asked 3 times each
    printed = capsys.readouterr().out
    assert ("pairing: 1 instruction(s) only in --model_outputs, left out (first: 'only in the model file'). "
            "1 instruction(s) only in --reference_outputs, left out (first: 'only in the reference file'). "
            "1 instruction(s) more than once in a file, left out (first: 'twice in the reference')") in printed
    # AlpacaEval's numbers on the frame the pairs make: wins 2, the loss 1, the ties 1.5, the unreadable pair null.
    expected = _alpaca_eval_winrate([2, 2, 2, 1, 1.5, 1.5, None])
    assert {k: summary[k] for k in AE_KEYS} == pytest.approx({k: expected[k] for k in AE_KEYS}, abs=1e-9)
    assert summary["win_rate"] == pytest.approx(100 * np.mean([1, 1, 1, 0, 0.5, 0.5]))
    assert (summary["n_pairs"], summary["n_wins"], summary["n_losses"], summary["n_ties"], summary["n_unreadable"]) \
        == (6, 3, 1, 2, 1)
    assert summary["weighting"] == "discrete" and summary["length_control"] is None  # < 10 pairs
    assert (summary["model"], summary["reference"], summary["judge_model"]) == ("tuned", "base", "judge-m")
    assert summary["avg_length_model"] == pytest.approx(np.mean([len(f"GOOD answer {i}") for i in range(3)] + [4, 5, 5]))
    assert summary["avg_length"] == int(np.mean([len(f"GOOD answer {i}") for i in range(3)] + [4, 5, 5, 1]))
    assert summary["usage"]["total_tokens"] == 18 * 30  # the stub reports 10 + 20 tokens per request
    # A retry is not the first ask again: a firmer follow-up quoting the reply, at a temperature above 0.
    asks = [r.body for r in requests if "UNREADABLE" in r.body["messages"][-1]["content"]]
    first = [b for b in asks if b["temperature"] == 0.0]
    retries = [b for b in asks if b is not first[0] and b is not first[1]]
    assert len(first) == 2 and len(retries) == 4
    assert all(b["temperature"] == 0.7 and "Your reply was: I cannot decide between them." in b["messages"][-1]["content"]
               for b in retries)
    annotations = json.loads((out / "annotations.json").read_text())
    assert len(annotations) == 7
    from alpaca_eval.metrics import get_winrate  # AlpacaEval reads the file as it is, to the same numbers

    read_back = get_winrate(annotations)
    assert {k: read_back[k] for k in AE_KEYS} == pytest.approx({k: summary[k] for k in AE_KEYS}, abs=1e-12)
    tie = next(a for a in annotations if a["instruction"] == "tie 0\n\nsome input")  # AlpacaEval's form
    assert {k: tie[k] for k in ("output_1", "generator_1", "output_2", "generator_2", "annotator", "preference")} == {
        "output_1": "plain too", "generator_1": "base", "output_2": "plain", "generator_2": "tuned",
        "annotator": "judge-m", "preference": 1.5}
    assert tie["verdicts"] == ["a", "a"] and tie["model_won"] == [1, 0] and "input" not in tie
    unreadable = next(a for a in annotations if a["instruction"] == "UNREADABLE case")
    assert unreadable["preference"] is None and unreadable["verdicts"] == [None, None]
    assert unreadable["replies"][0] == "I cannot decide between them."
    with open(board, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["reference"], r["judge_model"]) for r in rows] == [("tuned", "base", "judge-m")]
    assert rows[0]["win_rate"] == f"{summary['win_rate']:.2f}" == "66.67"
    report = (out / "report.md").read_text()
    assert "# tuned vs base" in report and "**66.7%**" in report and "## Where the model lost most clearly" in report
    assert "### lose" in report and "![win rates and output lengths](judge.png)" in report
    assert (out / "judge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logprobs_weight_each_verdict_by_the_judges_probability(tmp_path):
    model, ref = _files(tmp_path)
    with OpenAIStub(default=_judge(logprob_winner=0.9)) as stub:
        summary = _judge_in_process(model, ref, tmp_path / "judge" / "lp", stub, tmp_path / "board.csv")
        assert all(r.body["logprobs"] is True and r.body["top_logprobs"] == 5 for r in stub.requests)
    # wins: 0.9 in both orders; the loss: 0.1; the ties: 0.7 for the model in one order, 0.3 in the other.
    assert summary["weighting"] == "logprobs"
    expected = _alpaca_eval_winrate([1.9, 1.9, 1.9, 1.1, 1.5, 1.5, None])
    assert {k: summary[k] for k in AE_KEYS} == pytest.approx({k: expected[k] for k in AE_KEYS}, abs=1e-9)
    assert summary["win_rate"] == pytest.approx(100 * (3 * 0.9 + 0.1 + 2 * 0.5) / 6)
    assert (summary["n_wins"], summary["n_losses"], summary["n_ties"]) == (3, 1, 2)


CHATTY = {"win 0": "A better answer is Output ({model}).", "win 1": "**Output ({model})**",
          "win 2": "Ａｎｓｗｅｒ: ({model})", "lose": "The better output is ({ref}).",
          "tie 0": "Output (a) is good, but Output (b) is better.", "tie 1": "Both are fine."}


def test_a_chatty_judge_is_read_as_it_writes(tmp_path):
    """Replies in sentences, full width and markup, through the CLI: read as the output they name; a reply
    naming both outputs or neither stays unreadable."""
    model, ref = _files(tmp_path)

    def answer(req: Request) -> Step:
        text = req.body["messages"][-1]["content"]
        instruction = text.split("## Request\n")[1].split("\n")[0]
        model_letter = "a" if "GOOD answer" in _outputs_of(text)[0] or "weak\n" in _outputs_of(text)[0] else "b"
        ref_letter = "b" if model_letter == "a" else "a"
        reply = CHATTY.get(instruction, "neither").format(model=model_letter, ref=ref_letter)
        return Step(body=chat_body(reply))

    with OpenAIStub(default=answer) as stub:
        run_script([sys.executable, EVAL_MODEL, "judge", "--model_outputs", str(model), "--reference_outputs", str(ref),
                    "--judge_model", "j", "--output_dir", "out", "--base_url", stub.base_url,
                    "--leaderboard", "board.csv", "--max_unreadable_retries", "0"], tmp_path)
    rows = {r["instruction"]: r for r in json.loads((tmp_path / "out" / "annotations.json").read_text())}
    assert [rows[f"win {i}"]["preference"] for i in range(3)] == [2.0, 2.0, 2.0]
    assert rows["lose"]["preference"] == 1.0 and rows["lose"]["verdicts"] == ["b", "a"]
    assert rows["tie 0\n\nsome input"]["preference"] is None and rows["tie 1\n\nsome input"]["preference"] is None


def test_rerun_asks_again_for_pairs_without_a_readable_verdict(tmp_path):
    model, ref = _files(tmp_path)
    cmd = [sys.executable, EVAL_MODEL, "judge", "--model_outputs", str(model), "--reference_outputs", str(ref),
           "--judge_model", "j", "--output_dir", "out", "--leaderboard", "board.csv"]
    with OpenAIStub(default=_judge()) as stub:
        run_script([*cmd, "--base_url", stub.base_url], tmp_path)
        assert len(stub.requests) == 18
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_unreadable"] == 1
    with OpenAIStub(default=_judge(unreadable="NO SUCH TEXT")) as fixed:  # the judge now answers every pair
        log = run_script([*cmd, "--base_url", fixed.base_url], tmp_path)
        asked = [r.body["messages"][-1]["content"] for r in fixed.requests]
    assert len(asked) == 2 and all("UNREADABLE case" in a for a in asked)  # only the unreadable pair, both orders
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["n_pairs"], summary["n_unreadable"]) == (7, 0) and "win rate of tuned vs base" in log


def test_a_judge_on_a_server_starts_without_torch_or_transformers(tmp_path):
    """Nothing on that path needs them (a second or more each to import): the command line as users type
    it, with an atexit handler that writes down which of them it imported."""
    model, ref = _files(tmp_path)
    seen = tmp_path / "imported.json"
    with OpenAIStub(default=_judge()) as stub:
        code = (f"import atexit, json, runpy, sys\n"
                f"atexit.register(lambda: open({str(seen)!r}, 'w').write(json.dumps(sorted(\n"
                f"    {{'torch', 'transformers', 'deepspeed'}} & set(sys.modules)))))\n"
                f"sys.argv = [{EVAL_MODEL!r}, *sys.argv[1:]]\n"
                f"runpy.run_path({EVAL_MODEL!r}, run_name='__main__')\n")
        run_script([sys.executable, "-c", code, "judge", "--model_outputs", str(model), "--reference_outputs",
                    str(ref), "--judge_model", "j", "--output_dir", "out", "--base_url", stub.base_url], tmp_path)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_pairs"] == 6
    assert json.loads(seen.read_text()) == []


def test_no_readable_verdict_at_all_fails_with_the_replies_and_a_rerun_recovers(tmp_path):
    model, ref = _files(tmp_path)
    cmd = [sys.executable, EVAL_MODEL, "judge", "--model_outputs", str(model), "--reference_outputs", str(ref),
           "--judge_model", "j", "--output_dir", "out", "--leaderboard", "board.csv", "--max_unreadable_retries", "1"]
    with OpenAIStub(default=lambda req: Step(body=chat_body("Sure! Here is my analysis of both outputs"))) as stub:
        err = run_script([*cmd, "--base_url", stub.base_url], tmp_path, expect=1)
        assert len(stub.requests) == 7 * 2 * 2
    assert ("error: no pair got a readable verdict from j (7 pairs; its replies began: 'Sure! Here is my analysis of "
            "both outputs'; 'Sure! Here is my analysis of both outputs'; 'Sure! Here is my analysis of both outputs')."
            ) in err
    assert "run the same command again: it asks again for every pair without a readable verdict." in err
    assert "annotations.json" not in err and "Traceback" not in err
    assert not (tmp_path / "out" / "summary.json").exists() and not (tmp_path / "out" / "annotations.json").exists()
    with OpenAIStub(default=_judge(unreadable="NO SUCH TEXT")) as fixed:
        run_script([*cmd, "--base_url", fixed.base_url], tmp_path)
        assert len(fixed.requests) == 14  # every pair asked again, in both orders
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_pairs"] == 7


def test_diagnostics_of_a_judge_with_a_planted_position_bias(tmp_path):
    """5 pairs with a clear winner (both orders agree), 5 where the judge names whatever is first, 2 it
    cannot read: order consistency 5/10, first position 15/20, unreadable 2/12 — all past their thresholds."""
    model, reference = [], []
    for i in range(12):
        kind = "clear" if i < 5 else "biased" if i < 10 else "UNREADABLE"
        model.append({"instruction": f"{kind} {i}", "output": "GOOD" if kind == "clear" else "same", "generator": "m"})
        reference.append({"instruction": f"{kind} {i}", "output": "weak" if kind == "clear" else "same", "generator": "r"})
    (tmp_path / "m.json").write_text(json.dumps(model))
    (tmp_path / "r.json").write_text(json.dumps(reference))
    with OpenAIStub(default=_judge()) as stub:
        log = run_script([sys.executable, EVAL_MODEL, "judge", "--model_outputs", "m.json", "--reference_outputs",
                          "r.json", "--judge_model", "j", "--output_dir", "out", "--base_url", stub.base_url,
                          "--leaderboard", "board.csv", "--max_unreadable_retries", "0"], tmp_path)
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (s["order_consistency"], s["first_position_rate"], s["unreadable_rate"]) == (0.5, 0.75, 2 / 12)
    assert s["judge_warnings"] == [
        "the judge gave the same verdict in both orders for only 50% of pairs (under 60%; a coin flip gives 50%)",
        "the judge named the output shown first in 75% of its verdicts (outside 30-70%): it follows the position "
        "more than the content",
        "17% of pairs got no readable verdict (over 10%)"]
    assert all(f"warning: {w}" in log for w in s["judge_warnings"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**This judge is not reliable enough for the win rate to mean much:**" in report
    assert ("Same verdict in both orders: 50% of readable pairs. Named the output shown first: 75% of verdicts. "
            "Unreadable: 17% of pairs.") in report
    with open(tmp_path / "board.csv", newline="") as f:
        assert next(csv.DictReader(f))["judge_reliable"] == "False"


def test_leaderboard_rows_never_collide(tmp_path):
    """Two models both called "final" get a row each; judging the first again replaces only its own row."""
    board = tmp_path / "runs" / "leaderboard.csv"
    first, ref = _files(tmp_path, model_name="final")
    second, _ = _files(tmp_path, model_name="final", suffix=" (other model)")
    with OpenAIStub(default=_judge()) as stub:
        a = _judge_in_process(first, ref, tmp_path / "a" / "judge", stub, board)
        b = _judge_in_process(second, ref, tmp_path / "b" / "judge", stub, board)
        again = _judge_in_process(first, ref, tmp_path / "c" / "judge", stub, board)
    assert a["outputs_sha256"] != b["outputs_sha256"] and again["outputs_sha256"] == a["outputs_sha256"]
    with open(board, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["model"], r["outputs_sha256"]) for r in rows) == sorted(
        [("final", a["outputs_sha256"]), ("final", b["outputs_sha256"])])
    from alpaca_lib.evaluation.leaderboard import display_name

    assert sorted(display_name(r, rows) for r in rows) == sorted(
        [f"final [{a['outputs_sha256'][:6]}]", f"final [{b['outputs_sha256'][:6]}]"])


def _judged_model_source(tmp_path: Path, folder: Path) -> str:
    """The model_source a judge run gives outputs that `eval_model.py outputs --model_dir folder` wrote: the
    summary's, checked to be the leaderboard row's too."""
    model, ref = _files(tmp_path)
    (tmp_path / "model.journal.jsonl").write_text(json.dumps({"t": "start", "run": {"model": str(folder)}}) + "\n")
    with OpenAIStub(default=_judge()) as stub:
        summary = _judge_in_process(model, ref, tmp_path / "j", stub, tmp_path / "board.csv")
    with open(tmp_path / "board.csv", newline="") as f:
        assert next(csv.DictReader(f))["model_source"] == summary["model_source"]
    return summary["model_source"]


def test_leaderboard_row_names_the_train_folder_the_outputs_came_from(tmp_path):
    folder = tmp_path / "runs" / "a" / "final"
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoint-2" / "checkpoint_manifest.json").write_text(json.dumps(
        {"step": 2, "files": {}, "run": {"model": "base-model", "data": "alpaca_data.json"}}))
    assert _judged_model_source(tmp_path, folder) == f"{folder} (trained from base-model on alpaca_data.json)"


def _trained_from(base: str) -> dict:
    """A run record as train.py writes it (`run_identity` and the settings)."""
    return {"model": base, "model_content": base, "gguf_file": None, "data": "alpaca_data.json",
            "data_sha256": "0" * 64, "settings": {}}


def _outputs_of_folder(tmp_path: Path, folder: Path) -> Path:
    """Outputs whose journal says `eval_model.py outputs --model_dir folder` wrote them."""
    outputs = tmp_path / "model_outputs.json"
    journal_path(outputs).write_text(json.dumps({"t": "start", "run": {"model": str(folder)}}) + "\n")
    return outputs


def test_model_source_reads_the_newest_checkpoint_by_step_not_by_name(tmp_path):
    """checkpoint-10 is newer than checkpoint-9, though it sorts first as a string."""
    folder = tmp_path / "runs" / "a"
    for step, base in ((9, "older-base"), (10, "newer-base")):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        write_manifest(folder / f"checkpoint-{step}", step, _trained_from(base))
    assert model_source(str(_outputs_of_folder(tmp_path, folder))) == \
        f"{folder} (trained from newer-base on alpaca_data.json)"


def test_leaderboard_row_names_the_base_model_of_a_run_saved_without_checkpoints(tmp_path):
    """`--save_strategy no` (the demo): training_finished.json is the only record of what the run trained from."""
    folder = tmp_path / "runs" / "demo"
    folder.mkdir(parents=True)
    mark_finished(folder, 3, _trained_from("base-model"))
    assert _judged_model_source(tmp_path, folder) == f"{folder} (trained from base-model on alpaca_data.json)"


def test_model_source_prefers_the_final_models_record_to_a_checkpoints(tmp_path):
    """The folder's final model is what `outputs --model_dir` loaded; a checkpoint beside it may be of another
    run (a resume from another run's checkpoint, asked for by path)."""
    folder = tmp_path / "runs" / "a"
    (folder / "checkpoint-2").mkdir(parents=True)
    write_manifest(folder / "checkpoint-2", 2, _trained_from("checkpoint-base"))
    mark_finished(folder, 4, _trained_from("final-base"))
    outputs = _outputs_of_folder(tmp_path, folder)
    assert model_source(str(outputs)) == f"{folder} (trained from final-base on alpaca_data.json)"
    mark_finished(folder, 4, None)  # a record that names no model: the checkpoint's is used
    assert model_source(str(outputs)) == f"{folder} (trained from checkpoint-base on alpaca_data.json)"

def test_score_recomputes_a_judge_run_from_its_annotations(tmp_path):
    model, ref = _files(tmp_path)
    with OpenAIStub(default=_judge(logprob_winner=0.8)) as stub:
        judged = _judge_in_process(model, ref, tmp_path / "judged", stub, tmp_path / "board.csv")
    log = run_script([sys.executable, EVAL_MODEL, "score", "--annotations", "judged/annotations.json",
                      "--output_dir", "scored", "--leaderboard", "board.csv"], tmp_path)
    scored = json.loads((tmp_path / "scored" / "summary.json").read_text())
    same = [k for k in judged if k not in ("usage", "cost_usd", "n_only_in_model", "n_only_in_reference",
                                          "n_duplicated", "model_source")]
    assert {k: scored[k] for k in same} == {k: judged[k] for k in same}
    assert "win rate of tuned vs base: 60.0% ± 10.0 (6 pairs, logprobs)" in log  # (3 * 0.8 + 0.2 + 2 * 0.5) / 6
    with open(tmp_path / "board.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 1  # the same outputs: the same row


def _length_rows(n: int, seed: int = 0) -> list[dict]:
    """AlpacaEval-layout annotations of another tool: lengths that matter, draws, an unreadable pair."""
    rng = np.random.default_rng(seed)
    len_ref = rng.integers(50, 400, n)
    len_model = len_ref + rng.integers(-100, 300, n)
    p = 1 / (1 + np.exp(-(-0.5 - 1.2 * np.tanh((len_ref - len_model) / np.std(len_ref - len_model)))))
    pref = np.where(rng.random(n) < p, 2.0, 1.0)
    pref[:3] = 1.5
    rows = [{"instruction": f"task {i}", "output_1": "r" * int(a), "generator_1": "gpt4_ref", "output_2": "m" * int(b),
             "generator_2": "my-model", "annotator": "some_judge", "preference": float(x)}
            for i, (a, b, x) in enumerate(zip(len_ref, len_model, pref))]
    rows[3]["preference"] = None
    return rows


def _score(tmp_path, rows, hub_cache: Path, monkeypatch) -> dict:
    """`eval_model.py score` on `rows`, with `hub_cache` as the Hugging Face cache (offline)."""
    (tmp_path / "ann.json").write_text(json.dumps(rows))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    run_script([sys.executable, EVAL_MODEL, "score", "--annotations", "ann.json", "--output_dir", "scored",
                "--leaderboard", "board.csv"], tmp_path)
    return json.loads((tmp_path / "scored" / "summary.json").read_text())


def test_score_gives_alpaca_evals_numbers_minimal_offline_and_v1_with_df_gamed(tmp_path, monkeypatch):
    import alpaca_eval.constants
    from alpaca_eval.metrics import get_winrate
    from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

    rows = _length_rows(805)
    frame = pd.DataFrame(rows)
    plant_df_gamed(tmp_path / "planted")
    monkeypatch.setattr(alpaca_eval.constants, "DEFAULT_CACHE_DIR", str(tmp_path / "planted"))
    expected = get_winrate(frame)
    minimal = get_length_controlled_winrate(frame.copy(), glm_name="length_controlled_minimal", save_weights_dir=None)
    v1 = get_length_controlled_winrate(frame.copy(), glm_name="length_controlled_v1", save_weights_dir=None)

    offline = _score(tmp_path, rows, tmp_path / "empty-cache", monkeypatch)  # no df_gamed.csv: the minimal formula
    assert {k: offline[k] for k in AE_KEYS} == pytest.approx({k: expected[k] for k in AE_KEYS}, abs=1e-9)
    assert offline["length_control"] == "minimal"
    assert offline["length_controlled_winrate"] == pytest.approx(minimal["length_controlled_winrate"], abs=1e-9)
    assert "AlpacaEval's length_controlled_minimal: these pairs only, not the leaderboard's LC" in \
        (tmp_path / "scored" / "report.md").read_text()

    with_gamed = _score(tmp_path, rows, tmp_path / "planted", monkeypatch)
    assert with_gamed["length_control"] == "alpaca_eval_v1"
    assert with_gamed["length_controlled_winrate"] == pytest.approx(v1["length_controlled_winrate"], abs=1e-9)
    assert with_gamed["lc_standard_error"] == pytest.approx(v1["lc_standard_error"], abs=1e-9)
    assert with_gamed["length_controlled_winrate"] != pytest.approx(minimal["length_controlled_winrate"], abs=0.1)
    assert "AlpacaEval 2's length_controlled_v1, comparable with its leaderboard" in \
        (tmp_path / "scored" / "report.md").read_text()


def test_score_refuses_annotations_it_cannot_read(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "x", "output_1": "a", "output_2": "b",
                                                    "preference": 3}]))
    err = run_script([sys.executable, EVAL_MODEL, "score", "--annotations", "bad.json", "--output_dir", "out",
                      "--leaderboard", "board.csv"], tmp_path, expect=1)
    assert ("error: --annotations bad.json: record 0 has preference 3; expected a number in [1, 2] (0 or 1.5 for a "
            "draw) or null") in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "board.csv").exists()


def test_a_model_that_wins_only_by_length_gets_a_lower_length_controlled_rate(tmp_path):
    """End to end through the judge, which looks only at length: it names the output more than 30 characters
    longer, and otherwise whatever comes first (a tie over both orders). The model is usually the longer one,
    so its raw win rate is well above 50%; with the length difference taken out, about even is left."""
    model, reference, expected = [], [], []
    rng = np.random.default_rng(0)
    for i in range(30):
        base, d = int(rng.integers(40, 200)), int(rng.integers(-60, 150))  # d: model minus reference
        m, r = base + max(d, 0), base + max(-d, 0)
        expected.append(2.0 if m - r > 30 else 1.0 if r - m > 30 else 1.5)
        model.append({"instruction": f"q {i}", "output": "m" * m, "generator": "padded"})
        reference.append({"instruction": f"q {i}", "output": "r" * r, "generator": "base"})
    (tmp_path / "m.json").write_text(json.dumps(model))
    (tmp_path / "r.json").write_text(json.dumps(reference))

    def by_length(a: str, b: str) -> str:
        la, lb = len(a.strip()), len(b.strip())
        return "b" if lb - la > 30 else "a"

    with OpenAIStub(default=_judge(prefer=by_length)) as stub:
        summary = _judge_in_process(tmp_path / "m.json", tmp_path / "r.json", tmp_path / "j", stub,
                                    tmp_path / "board.csv")
    assert summary["win_rate"] == pytest.approx(100 * (np.mean(expected) - 1)) == pytest.approx(71.67, abs=0.01)
    assert summary["length_control"] == "minimal"
    assert summary["length_controlled_winrate"] < summary["win_rate"] - 15
    assert summary["length_controlled_winrate"] == pytest.approx(50, abs=5)


def test_killed_judge_resumes_without_paying_twice_and_refuses_another_judge(tmp_path):
    model, ref = _files(tmp_path)
    out = tmp_path / "judge" / "resumed"
    cmd = [sys.executable, EVAL_MODEL, "judge", "--model_outputs", str(model), "--reference_outputs", str(ref),
           "--judge_model", "judge-m", "--output_dir", str(out), "--max_concurrency", "1",
           "--leaderboard", str(tmp_path / "board.csv")]
    journal = out / JOURNAL_NAME
    with OpenAIStub(default=_judge(delay_s=0.1)) as stub:
        kill_when_journaled([*cmd, "--base_url", stub.base_url], tmp_path, journal, '"t": "verdict"', 5)
        time.sleep(0.5)  # a request the killed run had already sent reaches the stub now, not during the rerun
        first = len(stub.requests)
        verdicts = [json.loads(line) for line in journal.read_text().splitlines() if '"t": "verdict"' in line]
        assert 5 <= len(verdicts) < 14 and not (out / "summary.json").exists()
        log = run_script([*cmd, "--base_url", stub.base_url], tmp_path)
        # The resumed run asked only for the verdicts the journal lacked a readable one of: all 18 requests,
        # less those paid for readable verdicts (an unreadable one journaled is asked again).
        assert len(stub.requests) - first == 18 - sum(v["attempts"] for v in verdicts if v["letter"])
        assert "win rate of tuned vs base: 66.7%" in log
        err = run_script([*cmd, "--base_url", stub.base_url, "--judge_model", "other"], tmp_path, expect=1)
    assert f"error: {journal} belongs to another judging run (judge_model was 'judge-m', now 'other')." in err


def test_judge_survives_server_faults(tmp_path):
    model, ref = _files(tmp_path)
    script = [error(429, "slow down", headers={"retry-after": "0"}), error(500, "boom"), error(503, "busy"),
              Step(body=chat_body("a"), delay_s=5.0)]  # answered after --request_timeout: retried
    with OpenAIStub(script=script, default=_judge()) as stub:
        summary = _judge_in_process(model, ref, tmp_path / "j" / "f", stub, tmp_path / "board.csv",
                                    max_concurrency=1, request_timeout=0.5, max_retries=4)
        assert len(stub.requests) == 18 + 4
    assert summary["n_pairs"] == 6


def test_files_with_nothing_in_common_are_refused(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "x", "output": "1"}]))
    (tmp_path / "b.json").write_text(json.dumps([{"instruction": "y", "output": "2"}]))
    err = run_script([sys.executable, EVAL_MODEL, "judge", "--model_outputs", "a.json", "--reference_outputs", "b.json",
                      "--judge_model", "m", "--output_dir", "out", "--base_url", "http://127.0.0.1:9/v1"],
                     tmp_path, expect=1)
    assert "error: a.json and b.json share no instruction: nothing to judge." in err and "Traceback" not in err


def test_one_judge_is_named(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "x", "output": "1"}]))
    err = run_script([sys.executable, EVAL_MODEL, "judge", "--model_outputs", "a.json", "--reference_outputs", "a.json",
                      "--output_dir", "out"], tmp_path, expect=1)
    assert "error: give either --judge_model (a judge on a server) or --judge_model_dir (a local model, " in err
    assert not (tmp_path / "out").exists()


def test_in_process_judge_reads_the_letters_probabilities_one_forward_pass_per_order(tmp_path, tiny_llama_dir,
                                                                                     monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alpaca_lib.evaluation import local_judge

    model, ref = _files(tmp_path)
    loaded = []
    real_load = local_judge.LocalJudge.load
    monkeypatch.setattr(local_judge.LocalJudge, "load",
                        classmethod(lambda cls, *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1]))
    eval_model.judge(model_outputs=str(model), reference_outputs=str(ref), output_dir=str(tmp_path / "j"),
                     judge_model_dir=str(tiny_llama_dir), judge_batch_size=1, leaderboard=str(tmp_path / "board.csv"),
                     judge_dtype="float32")  # as the float32 forward passes below
    summary = json.loads((tmp_path / "j" / "summary.json").read_text())
    rows = json.loads((tmp_path / "j" / "annotations.json").read_text())
    assert loaded[0].forward_passes == 2 * 7  # one per order of each pair, batch size 1
    assert summary["weighting"] == "logprobs" and summary["n_unreadable"] == 0 and summary["n_pairs"] == 7
    assert "Tokens:" not in (tmp_path / "j" / "report.md").read_text()  # no request was sent: nothing to count
    # The same probabilities from a plain forward pass of each prompt, restated here.
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = {x: sorted({tok.encode(s, add_special_tokens=False)[0] for s in (x, x.upper(), " " + x, " " + x.upper())
                      if len(tok.encode(s, add_special_tokens=False)) == 1}) for x in "ab"}

    def p_a(prompt: str) -> float:
        with torch.no_grad():
            probs = lm(torch.tensor([tok.encode(prompt + "\n\nAnswer:")])).logits[0, -1].softmax(-1)
        return float(probs[ids["a"]].sum() / (probs[ids["a"]].sum() + probs[ids["b"]].sum()))

    for row in rows:
        record = {"instruction": row["instruction"], "input": row.get("input", "")}
        p0 = p_a(judge_prompt(record, row["output_2"], row["output_1"]))  # the model shown as Output (a)
        p1 = p_a(judge_prompt(record, row["output_1"], row["output_2"]))
        assert row["p_model"] == pytest.approx([p0, 1 - p1], abs=1e-5)
        assert row["preference"] == pytest.approx(1 + (p0 + 1 - p1) / 2, abs=1e-5)
        assert row["verdicts"] == ["a" if p0 >= 0.5 else "b", "a" if p1 >= 0.5 else "b"]
