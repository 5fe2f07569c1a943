"""`eval_model.py score`: numbers from files, no judge asked.

    python eval_model.py score --annotations runs/judge/demo_vs_base/annotations.json --output_dir runs/judge/rescored
    python eval_model.py score --model_outputs runs/small/model_outputs.json --references heldout.json \
        --output_dir runs/judge/small_rouge

With --annotations (a judge run's annotations.json, or one AlpacaEval published) it recomputes summary.json,
the leaderboard row, the report and the chart, as `eval_model.py judge` writes them (`write_results`). With
--model_outputs and --references (an eval set whose records carry the reference answer as `output`) it writes
rouge.json: ROUGE-L of each output against its reference (alpaca_lib/evaluation/refscore.py), paired by
request as the judge pairs them (alpaca_lib/evaluation/pairing.py), and their mean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import atomic_write
from alpaca_lib.core.locking import output_lock
from alpaca_lib.core.preflight import check_not_an_input, check_output_dir
from alpaca_lib.core.prompt import request_text
from alpaca_lib.evaluation.config import ScoreConfig
from alpaca_lib.evaluation.leaderboard import outputs_digest
from alpaca_lib.evaluation.metrics import summarize
from alpaca_lib.evaluation.pairing import load_outputs, name_of, pair_records
from alpaca_lib.evaluation.refscore import rouge_l
from alpaca_lib.evaluation.results import JudgeResult, write_results

ANNOTATION_KEYS = ("instruction", "output_1", "output_2", "preference")
REFSCORE_NAME = "rouge.json"


def load_annotations(path: str) -> list[dict]:
    """Annotation rows in AlpacaEval's layout (the project's annotations.json, or one AlpacaEval published).

    Raises:
        UsageError: not a JSON list of such rows, or rows of more than one model or reference.
    """
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except OSError as e:
        raise UsageError(f"--annotations {path}: cannot read it ({e.strerror})") from e
    except ValueError as e:
        raise UsageError(f"--annotations {path}: not JSON ({e}); expected the annotations.json a judge wrote") from e
    if not isinstance(rows, list) or not rows:
        raise UsageError(f"--annotations {path}: expected a non-empty JSON list of annotations, "
                         f"got {type(rows).__name__}")
    for i, r in enumerate(rows):
        missing = [k for k in ANNOTATION_KEYS if not isinstance(r, dict) or k not in r]
        if missing:
            raise UsageError(f"--annotations {path}: record {i} lacks {missing}; expected AlpacaEval's layout "
                             "(instruction, output_1, output_2, preference, generator_1, generator_2)")
        p = r["preference"]
        if p is not None and not (isinstance(p, (int, float)) and not isinstance(p, bool) and (p == 0 or 1 <= p <= 2)):
            raise UsageError(f"--annotations {path}: record {i} has preference {p!r}; expected a number in [1, 2] "
                             "(0 or 1.5 for a draw) or null")
    for key in ("generator_1", "generator_2"):
        names = {r.get(key) for r in rows}
        if len(names) > 1:
            raise UsageError(f"--annotations {path}: {key} takes {len(names)} values ({sorted(map(str, names))[:3]}); "
                             "score the annotations of one model against one reference at a time")
    return rows


def score_against_references(model_outputs: str, references: str) -> dict:
    """ROUGE-L (alpaca_lib/evaluation/refscore.py) of each model output against its reference, paired by instruction
    request (`pair_key`): {"rouge_l": the mean, "n_records", "per_record": [{"instruction", "rouge_l"}], ...},
    where each record's `instruction` is its request (its input, if any, after a blank line)."""
    model = load_outputs(model_outputs, "--model_outputs")
    reference = load_outputs(references, "--references")
    pairing = pair_records(model, reference)
    if not pairing.pairs:
        raise UsageError(f"{model_outputs} and {references} share no instruction: nothing to score. "
                         f"{pairing.report('--references')}")
    scores = rouge_l([m["output"] for m, _ in pairing.pairs], [r["output"] for _, r in pairing.pairs])
    return {"model": name_of(model, model_outputs), "references": str(references),
            "rouge_l": sum(scores) / len(scores), "n_records": len(scores), "pairing": pairing.report("--references"),
            "per_record": [{"instruction": request_text(m), "rouge_l": s}
                           for (m, _), s in zip(pairing.pairs, scores)]}


def _check_flags(cfg: ScoreConfig) -> None:
    """Refuses flags that cannot work together, and an --output_dir that cannot be written or is an input."""
    if (cfg.model_outputs is None) != (cfg.references is None):
        raise UsageError("--model_outputs and --references go together: the outputs to score and the eval set "
                         "whose `output` is the reference answer.")
    if cfg.annotations is None and cfg.model_outputs is None:
        raise UsageError("give --annotations (a judge's annotations.json), or --model_outputs with --references "
                         "(ROUGE-L against reference answers), or both.")
    check_output_dir(cfg.output_dir, "--output_dir")
    check_not_an_input(cfg.output_dir, "--output_dir", {k: v for k, v in (
        ("--annotations", cfg.annotations), ("--model_outputs", cfg.model_outputs),
        ("--references", cfg.references)) if v})


def _write_refscore(out: Path, refscore: dict) -> None:
    with atomic_write(out / REFSCORE_NAME) as f:
        json.dump(refscore, f, indent=2, ensure_ascii=False)
    print(f"ROUGE-L of {refscore['model']} against the references: {refscore['rouge_l']:.4f} "
          f"({refscore['n_records']} records); per record: {out / REFSCORE_NAME}")


def _annotations_summary(rows: list[dict], annotations: str) -> dict:
    """summary.json's content for annotations scored without a judge (no usage, no cost)."""
    annotators = sorted({str(r.get("annotator")) for r in rows if r.get("annotator")})
    return {
        "model": rows[0].get("generator_2") or "model", "reference": rows[0].get("generator_1") or "reference",
        **summarize(rows), "judge_model": ", ".join(annotators),
        "prompt_version": rows[0].get("prompt_version"), "usage": None, "cost_usd": None,
        "outputs_sha256": outputs_digest(rows), "annotations": str(annotations),
    }


def run_score(cfg: ScoreConfig) -> Optional[JudgeResult]:
    """`eval_model.py score`: with --annotations, summary.json, the leaderboard row, the report and the chart
    recomputed from them, without asking any judge; with --model_outputs and --references, rouge.json
    (ROUGE-L per record and overall). Returns the annotations' result (None without --annotations).

    Raises:
        UsageError: flags or files that cannot work; nothing is created then.
    """
    _check_flags(cfg)
    rows = load_annotations(cfg.annotations) if cfg.annotations else None
    refscore = score_against_references(cfg.model_outputs, cfg.references) if cfg.model_outputs else None
    out = Path(cfg.output_dir)
    result = None
    with output_lock(out, f"eval_model.py score --output_dir {cfg.output_dir}"):
        if refscore is not None:
            _write_refscore(out, refscore)
        if rows is not None:
            summary = _annotations_summary(rows, cfg.annotations)
            write_results(out, summary, rows, cfg.leaderboard, summary["annotations"], annotations=False)
            result = JudgeResult(summary, rows, out)
    return result
