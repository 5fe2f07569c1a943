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

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Optional

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import atomic_write
from alpaca_lib.core.locking import output_lock
from alpaca_lib.core.preflight import check_not_an_input, check_output_dir
from alpaca_lib.core.prompt import request_text
from alpaca_lib.evaluation.config import ScoreConfig
from alpaca_lib.evaluation.leaderboard import outputs_digest, read_board
from alpaca_lib.evaluation.metrics import summarize
from alpaca_lib.evaluation.pairing import load_outputs, name_of, pair_records
from alpaca_lib.evaluation.refscore import beyond_ascii, rouge_l
from alpaca_lib.evaluation.results import JudgeResult, write_results

ANNOTATION_KEYS = ("instruction", "output_1", "output_2", "preference")
REFSCORE_NAME = "rouge.json"


def _read_json(path: str):
    """The JSON value in `path`, gunzipped first when it is gzipped (AlpacaEval publishes annotations.json.gz)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"--annotations {path}: cannot read it ({e.strerror})") from e
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return json.loads(data.decode("utf-8"))
    except (OSError, EOFError, ValueError) as e:  # a broken gzip stream, bytes that are not UTF-8, not JSON
        raise UsageError(f"--annotations {path}: not JSON ({e}); expected the annotations.json a judge wrote "
                         "(or gzipped)") from e


def _check_record(path: str, i: int, r) -> None:
    missing = [k for k in ANNOTATION_KEYS if not isinstance(r, dict) or k not in r]
    if missing:
        raise UsageError(f"--annotations {path}: record {i} lacks {missing}; expected AlpacaEval's layout "
                         "(instruction, output_1, output_2, preference, generator_1, generator_2)")
    for key in ("instruction", "output_1", "output_2"):
        if not isinstance(r[key], str):
            raise UsageError(f"--annotations {path}: record {i} has {key} {json.dumps(r[key])[:60]}; expected a string"
                             + (" (\"\" for an empty output)" if key != "instruction" else ""))
    p = r["preference"]
    if p is not None and not (isinstance(p, (int, float)) and not isinstance(p, bool) and (p == 0 or 1 <= p <= 2)):
        raise UsageError(f"--annotations {path}: record {i} has preference {p!r}; expected a number in [1, 2] "
                         "(0 or 1.5 for a draw) or null")


def load_annotations(path: str) -> list[dict]:
    """Annotation rows in AlpacaEval's layout (the project's annotations.json, or one AlpacaEval published;
    gzipped or not).

    Raises:
        UsageError: not a JSON list of such rows, no readable preference, or rows of more than one model or
            reference.
    """
    rows = _read_json(path)
    if not isinstance(rows, list):
        raise UsageError(f"--annotations {path}: expected a JSON list of annotations, got {type(rows).__name__}")
    if not rows:
        raise UsageError(f"--annotations {path}: the list of annotations is empty; nothing to score")
    for i, r in enumerate(rows):
        _check_record(path, i, r)
    if all(r["preference"] is None for r in rows):
        raise UsageError(f"--annotations {path}: no record has a preference (all {len(rows)} are null: no readable "
                         "verdict); nothing to score (a judge run asks again for the verdicts it lacks when run again)")
    for key in ("generator_1", "generator_2"):
        names = {r.get(key) for r in rows}
        if len(names) > 1:
            raise UsageError(f"--annotations {path}: {key} takes {len(names)} values ({sorted(map(str, names))[:3]}); "
                             "score the annotations of one model against one reference at a time")
    return rows


def duplicates_note(rows: list[dict]) -> str:
    """One line on instructions annotated more than once ("" when none is): unlike the judge, which leaves a
    repeated instruction out, `score` counts every row, as AlpacaEval's metrics do, so its numbers stay
    AlpacaEval's."""
    counts = Counter(r["instruction"] for r in rows)
    repeated = [k for k, n in counts.items() if n > 1]
    if not repeated:
        return ""
    shown = "; ".join(repr(k[:60]) for k in repeated[:3])
    return (f"{len(repeated)} instruction(s) more than once in --annotations ({sum(counts[k] for k in repeated)} "
            f"rows), all counted as AlpacaEval counts them (first: {shown})")


def score_against_references(model_outputs: str, references: str) -> dict:
    """ROUGE-L (alpaca_lib/evaluation/refscore.py) of each model output against its reference, paired by instruction
    request (`pair_key`): {"rouge_l": the mean, "n_records", "tokenizer", "per_record": [{"instruction",
    "rouge_l"}], ...}, where each record's `instruction` is its request (its input, if any, after a blank line).
    The tokenizer is rouge_score's ("words") unless a record has letters it drops ("chars": see refscore.py)."""
    model = load_outputs(model_outputs, "--model_outputs")
    reference = load_outputs(references, "--references")
    pairing = pair_records(model, reference)
    if not pairing.pairs:
        raise UsageError(f"{model_outputs} and {references} share no instruction: nothing to score. "
                         f"{pairing.report('--references')}")
    outputs, refs = [m["output"] for m, _ in pairing.pairs], [r["output"] for _, r in pairing.pairs]
    n_beyond = sum(beyond_ascii(o) or beyond_ascii(r) for o, r in zip(outputs, refs))
    tokenizer = "chars" if n_beyond else "words"
    scores = rouge_l(outputs, refs, tokenizer)
    return {"model": name_of(model, model_outputs), "references": str(references),
            "rouge_l": sum(scores) / len(scores), "n_records": len(scores), "tokenizer": tokenizer,
            "n_records_beyond_ascii": n_beyond, "pairing": pairing.report("--references"),
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
    chars = ("" if refscore["tokenizer"] == "words" else
             f"; tokenized by characters, as rouge_score would drop the letters of {refscore['n_records_beyond_ascii']} "
             "record(s) (ASCII words stay words; not rouge_score's number)")
    print(f"ROUGE-L of {refscore['model']} against the references: {refscore['rouge_l']:.4f} "
          f"({refscore['n_records']} records{chars}); per record: {out / REFSCORE_NAME}")


def _annotations_summary(rows: list[dict], annotations: str) -> dict:
    """summary.json's content for annotations scored without a judge (no usage, no cost)."""
    annotators = sorted({str(r.get("annotator")) for r in rows if r.get("annotator")})
    return {
        "model": rows[0].get("generator_2") or "model", "reference": rows[0].get("generator_1") or "reference",
        **summarize(rows), "judge_model": ", ".join(annotators),
        "prompt_version": rows[0].get("prompt_version"), "usage": None, "cost_usd": None,
        "outputs_sha256": outputs_digest(rows), "annotations": str(annotations),
        "prompt_template": None, "reference_prompt_template": None,  # not in annotations
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
    summary = _annotations_summary(rows, cfg.annotations) if rows is not None else None
    note = duplicates_note(rows) if rows is not None else ""
    if rows is not None:
        read_board(Path(cfg.leaderboard))  # a board that cannot be read refuses the run before anything is made
    out = Path(cfg.output_dir)  # made (by the lock) only once everything above has passed
    result = None
    with output_lock(out, f"eval_model.py score --output_dir {cfg.output_dir}"):
        if refscore is not None:
            _write_refscore(out, refscore)
        if rows is not None:
            write_results(out, summary, rows, cfg.leaderboard, summary["annotations"], note, annotations=False)
            result = JudgeResult(summary, rows, out)
    if note:
        print(f"note: {note}")
    return result
