"""`eval_model.py score` on the annotations and outputs people actually hand it: refused ones leave nothing
behind, AlpacaEval's own edge cases give AlpacaEval's numbers, and ROUGE-L reads Chinese.

    .venv/bin/python -m pytest -n 0 -q tests/test_score_inputs.py

Every case runs the real script. The expected numbers come from `alpaca_eval.metrics` and `rouge_score`,
run by the test itself.
"""

from __future__ import annotations

import gzip
import json
import sys

import pandas as pd
import pytest
from rouge_score import rouge_scorer

from alpaca_lib.core.rouge import rouge_tokenize_chars
from conftest import REPO_ROOT, run_script

EVAL_MODEL = str(REPO_ROOT / "eval_model.py")
AE_KEYS = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "discrete_win_rate")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn, on AlpacaEval's own calls


def _rows(n: int = 12, model: str = "my-model") -> list[dict]:
    """Annotations in AlpacaEval's layout, with lengths that vary and every kind of preference."""
    prefs = [2.0, 1.0, 1.5, 2.0, 2.0, 1.0, None, 2.0, 1.0, 2.0, 1.5, 2.0]
    return [{"instruction": f"task {i}", "output_1": "r" * (20 + 7 * i), "generator_1": "gpt4_ref",
             "output_2": "m" * (15 + 11 * i), "generator_2": model, "annotator": "some_judge",
             "preference": prefs[i % len(prefs)]} for i in range(n)]


def _score(tmp_path, name: str, expect: int = 0) -> str:
    return run_script([sys.executable, EVAL_MODEL, "score", "--annotations", name, "--output_dir", "scored",
                       "--leaderboard", "board.csv"], tmp_path, expect=expect)


def _summary(tmp_path) -> dict:
    return json.loads((tmp_path / "scored" / "summary.json").read_text())


def _with(i: int, **change) -> list[dict]:
    rows = _rows()
    rows[i].update(change)
    return rows


@pytest.mark.parametrize("rows, message", [
    ([dict(r, preference=None) for r in _rows()],
     "error: --annotations ann.json: no record has a preference (all 12 are null: no readable verdict); nothing to "
     "score (a judge run asks again for the verdicts it lacks when run again)"),
    (_with(3, instruction=7), "error: --annotations ann.json: record 3 has instruction 7; expected a string"),
    (_with(5, output_2=None),
     'error: --annotations ann.json: record 5 has output_2 null; expected a string ("" for an empty output)'),
    ([], "error: --annotations ann.json: the list of annotations is empty; nothing to score"),
], ids=["all-preferences-null", "instruction-a-number", "output_2-null", "empty-list"])
def test_annotations_that_cannot_be_scored_are_refused_before_anything_is_written(tmp_path, rows, message):
    """Before the fix: a traceback after summary.json, judge.png and a leaderboard row were written (all null),
    tracebacks (a number, a null output), and "expected a non-empty JSON list ..., got list" (empty)."""
    (tmp_path / "ann.json").write_text(json.dumps(rows))
    err = _score(tmp_path, "ann.json", expect=1)
    assert err.strip().splitlines()[-1] == message and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json"]  # no folder, no board, no lock file


def test_a_model_scored_against_itself_gets_alpaca_evals_length_controlled_50(tmp_path):
    """AlpacaEval's get_length_controlled_winrate gives a model against itself 50, by construction; before the
    fix there was none (every length difference is 0, which the fit cannot use)."""
    from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

    rows = [dict(r, output_2=r["output_1"], generator_2="gpt4_ref") for r in _rows()]
    expected = get_length_controlled_winrate(pd.DataFrame(rows), glm_name="length_controlled_minimal",
                                             save_weights_dir=None)
    (tmp_path / "ann.json").write_text(json.dumps(rows))
    log = _score(tmp_path, "ann.json")
    s = _summary(tmp_path)
    assert (s["length_controlled_winrate"], s["lc_standard_error"], s["length_control"]) == (50.0, 0.0, "minimal")
    assert (expected["length_controlled_winrate"], expected["lc_standard_error"]) == (50.0, 0.0)
    assert "length-controlled 50.0% (AlpacaEval's length_controlled_minimal" in log


def test_gzipped_annotations_are_read(tmp_path):
    """AlpacaEval ships annotations gzipped; before the fix: "not JSON"."""
    rows = _rows()
    (tmp_path / "ann.json").write_text(json.dumps(rows))
    (tmp_path / "ann.json.gz").write_bytes(gzip.compress(json.dumps(rows).encode()))
    _score(tmp_path, "ann.json")
    plain = _summary(tmp_path)
    _score(tmp_path, "ann.json.gz")
    zipped = _summary(tmp_path)
    assert {k: v for k, v in zipped.items() if k != "annotations"} == {k: v for k, v in plain.items()
                                                                          if k != "annotations"}
    assert zipped["annotations"] == "ann.json.gz" and zipped["n_pairs"] == 11


def test_repeated_instructions_are_counted_as_alpaca_eval_counts_them_and_said(tmp_path):
    """AlpacaEval's get_winrate counts every annotation row, repeated instructions too, so `score` keeps them (its
    numbers stay AlpacaEval's) and says so in one line; before the fix it said nothing."""
    from alpaca_eval.metrics import get_winrate

    rows = _rows()
    rows[4]["instruction"] = rows[8]["instruction"] = rows[9]["instruction"] = "task 0"
    rows[11]["instruction"] = "task 1"
    (tmp_path / "ann.json").write_text(json.dumps(rows))
    log = _score(tmp_path, "ann.json")
    expected = get_winrate(pd.DataFrame(rows))
    assert {k: _summary(tmp_path)[k] for k in AE_KEYS} == pytest.approx({k: expected[k] for k in AE_KEYS}, abs=1e-12)
    assert _summary(tmp_path)["n_total"] == 11  # all 12 rows but the unreadable one
    note = ("note: 2 instruction(s) more than once in --annotations (6 rows), all counted as AlpacaEval counts them "
            "(first: 'task 0'; 'task 1')")
    assert note in log.splitlines()
    assert (f"Pairing: {note.removeprefix('note: ')}." in (tmp_path / "scored" / "report.md").read_text())


class _CharTokenizer:
    """rouge_score's tokenizer interface over the project's character tokenizer (the expectation)."""

    def tokenize(self, text):
        return rouge_tokenize_chars(text)


def test_rouge_l_of_chinese_answers_tokenizes_by_characters_and_says_so(tmp_path):
    """rouge_score keeps only [a-z0-9]: before the fix a Chinese answer scored 0.0 against a Chinese reference."""
    references = [{"instruction": "翻译成中文：I love cats.", "output": "我喜欢猫。"},
                  {"instruction": "Name a colour.", "output": "Blue is a colour."},
                  {"instruction": "中国的首都是哪里？", "output": "中国的首都是北京。"}]
    outputs = [{"instruction": "翻译成中文：I love cats.", "output": "我爱猫。", "generator": "tuned"},
               {"instruction": "Name a colour.", "output": "Red is a nice colour.", "generator": "tuned"},
               {"instruction": "中国的首都是哪里？", "output": "北京是中国的首都。", "generator": "tuned"}]
    (tmp_path / "refs.json").write_text(json.dumps(references, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "out.json").write_text(json.dumps(outputs, ensure_ascii=False), encoding="utf-8")
    log = run_script([sys.executable, EVAL_MODEL, "score", "--model_outputs", "out.json", "--references",
                      "refs.json", "--output_dir", "scored"], tmp_path)
    result = json.loads((tmp_path / "scored" / "rouge.json").read_text(encoding="utf-8"))
    chars = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CharTokenizer())
    words = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    per = [chars.score(r["output"], o["output"])["rougeL"].fmeasure for o, r in zip(outputs, references)]
    # 我爱猫 / 我喜欢猫: LCS 2 of 3 and 4 characters; 北京是中国的首都 / 中国的首都是北京: LCS 5 of 8 and 8.
    assert per[0] == pytest.approx(4 / 7, abs=1e-15) and per[2] == 0.625
    # An answer in ASCII scores exactly as rouge_score scores it.
    assert per[1] == words.score("Blue is a colour.", "Red is a nice colour.")["rougeL"].fmeasure
    assert [r["rouge_l"] for r in result["per_record"]] == per
    assert (result["tokenizer"], result["n_records_beyond_ascii"], result["rouge_l"]) == ("chars", 2, sum(per) / 3)
    assert (f"ROUGE-L of tuned against the references: {sum(per) / 3:.4f} (3 records; tokenized by characters, as "
            "rouge_score would drop the letters of 2 record(s) (ASCII words stay words; not rouge_score's number))"
            in log)
