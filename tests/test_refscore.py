"""alpaca_lib/evaluation/refscore.py and `eval_model.py score --model_outputs --references`: ROUGE-L against references.

    bash scripts/test.sh tests/test_refscore.py

Every score is compared with `rouge_score` (rougeL, no stemmer), the reference implementation.
"""

from __future__ import annotations

import json
import random
import sys

from rouge_score import rouge_scorer

from alpaca_lib.evaluation.refscore import rouge_l
from conftest import REPO_ROOT, alpaca_records, run_script

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def test_rouge_l_equals_rouge_score_bit_for_bit():
    outputs = [r["output"] for r in alpaca_records()]
    references = outputs[:]
    random.Random(0).shuffle(references)
    outputs += ["", "Same words here.", "The cat sat.", "ÄÖÜ only", "a b a b a"]
    references += ["x", "same WORDS here", "", "äöü", "b a b"]
    expected = [SCORER.score(r, o)["rougeL"].fmeasure for o, r in zip(outputs, references)]
    assert rouge_l(outputs, references) == expected
    assert rouge_l(["Same words here."], ["same WORDS here"]) == [1.0]


def test_score_writes_rouge_l_per_record_and_overall(tmp_path):
    references = [{"instruction": "Name a colour.", "output": "Blue is a colour."},
                  {"instruction": "Add.", "input": "2 and 3", "output": "The sum is 5."},
                  {"instruction": "Only in the references.", "output": "x"}]
    # The outputs carry the input in the instruction (as `eval_model.py outputs` writes them): they still pair.
    outputs = [{"instruction": "Add.\n\n2 and 3", "output": "5, the sum.", "generator": "tuned"},
               {"instruction": "Name a colour.", "output": "Red is a nice colour.", "generator": "tuned"}]
    (tmp_path / "refs.json").write_text(json.dumps(references))
    (tmp_path / "out.json").write_text(json.dumps(outputs))
    log = run_script([sys.executable, str(REPO_ROOT / "eval_model.py"), "score", "--model_outputs", "out.json",
                      "--references", "refs.json", "--output_dir", "scored"], tmp_path)
    result = json.loads((tmp_path / "scored" / "rouge.json").read_text())
    per = [SCORER.score("The sum is 5.", "5, the sum.")["rougeL"].fmeasure,
           SCORER.score("Blue is a colour.", "Red is a nice colour.")["rougeL"].fmeasure]
    assert [(r["instruction"], r["rouge_l"]) for r in result["per_record"]] == [("Add.\n\n2 and 3", per[0]),
                                                                                ("Name a colour.", per[1])]
    assert result["rouge_l"] == sum(per) / 2 and result["n_records"] == 2
    assert result["pairing"] == "1 instruction(s) only in --references, left out (first: 'Only in the references.')"
    assert f"ROUGE-L of tuned against the references: {sum(per) / 2:.4f} (2 records)" in log
    assert sorted(p.name for p in (tmp_path / "scored").iterdir()) == ["rouge.json"]


def test_score_needs_something_to_score(tmp_path):
    err = run_script([sys.executable, str(REPO_ROOT / "eval_model.py"), "score", "--output_dir", "scored"],
                     tmp_path, expect=1)
    assert "error: give --annotations (a judge's annotations.json), or --model_outputs with --references" in err
    assert not (tmp_path / "scored").exists()
