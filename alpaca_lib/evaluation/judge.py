"""`eval_model.py judge`: which of two models answers an evaluation set better, as AlpacaEval's win rate.

    python eval_model.py judge --model_outputs runs/demo/model_outputs.json \
        --reference_outputs runs/base/model_outputs.json --judge_model M --base_url URL \
        --output_dir runs/judge/demo_vs_base
    python eval_model.py judge ... --judge_model_dir runs/judge-model        # a local model, in-process

`run_judge` goes through the phases its log names: the two files are paired by request
(alpaca_lib/evaluation/pairing.py); every pair is judged in both orders (`judge_pairs`, with a judge of
alpaca_lib/evaluation/judges.py), so a judge that favours a position cancels out: the model's preference is
1 when it wins both, 0 when it loses both, 0.5 when the two orders disagree (a tie). When every verdict
comes with the judge's probabilities of the two letters (an API's logprobs, or the in-process judge), the
preference is instead the model's letter's probability averaged over the two orders, as AlpacaEval 2
weights its votes (`annotation_rows`). The numbers are AlpacaEval's, from its own code
(alpaca_lib/evaluation/metrics.py), with the judge's diagnostics beside them; the files are written by
alpaca_lib/evaluation/results.py. `eval_model.py score` recomputes them from annotations
(alpaca_lib/evaluation/score.py).

Every verdict is journaled (`judge.journal.jsonl` in the output folder) as it arrives, so a killed run
continues without paying twice, and a rerun asks again only where no readable verdict was journaled; a
journal of another judge, prompt or pair of files is refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.journal import Journal, records_of_run
from alpaca_lib.core.locking import output_lock
from alpaca_lib.core.preflight import check_model_source, check_not_an_input, check_output_dir
from alpaca_lib.core.progress import progress_bar
from alpaca_lib.core.prompt import request_text
from alpaca_lib.evaluation.config import JudgeConfig
from alpaca_lib.evaluation.judges import PROMPT_VERSION, Task, judge_prompt, make_judge
from alpaca_lib.evaluation.leaderboard import outputs_digest, read_board
from alpaca_lib.evaluation.local_judge import check_judge_tokenizer
from alpaca_lib.evaluation.metrics import summarize
from alpaca_lib.evaluation.outputs import file_digest
from alpaca_lib.evaluation.pairing import Pairing, load_outputs, name_of, pair_records
from alpaca_lib.evaluation.provenance import model_source, prompt_format_of
from alpaca_lib.evaluation.results import JudgeResult, write_results
from alpaca_lib.llm.pricing import load_price_table

JOURNAL_NAME = "judge.journal.jsonl"


def judge_pairs(judge, pairing: Pairing, output_dir: Path, run: dict, progress: Optional[bool] = None) -> dict:
    """Gets a readable verdict for every pair in both orders, resuming from the journal: verdicts already
    read are kept; unreadable ones are asked again.

    Returns:
        {"verdicts": {(pair, order): the latest record}, "usage": tokens paid for over all runs}
    """
    jpath = output_dir / JOURNAL_NAME
    earlier = records_of_run(jpath, run, "belongs to another judging run", "Use the same settings to continue it, "
                             "or another --output_dir to start afresh.")
    done, usage = {}, {"prompt_tokens": 0, "completion_tokens": 0}

    def keep(rec: dict) -> None:
        done[(rec["pair"], rec["order"])] = rec
        for k in usage:
            usage[k] += rec["usage"][k]

    for rec in earlier:
        if rec["t"] == "verdict":
            keep(rec)
    tasks = []
    for i, (model_rec, ref_rec) in enumerate(pairing.pairs):
        for order in (0, 1):
            if done.get((i, order), {}).get("letter") is None:  # never asked, or unreadable: ask (again)
                a, b = (model_rec["output"], ref_rec["output"]) if order == 0 else (ref_rec["output"], model_rec["output"])
                tasks.append(Task(i, order, judge_prompt(model_rec, a, b)))
    total = 2 * len(pairing.pairs)
    bar = progress_bar(total=total, desc="judge", initial=total - len(tasks), unit="verdict", dynamic_ncols=True,
                       disable=(not progress) if progress is not None else None)
    with Journal(jpath) as journal:
        journal.append({"t": "start", "time": time.time(), "run": run}, sync=True)
        try:
            for rec in judge.verdicts(tasks) if tasks else ():
                journal.append(rec, sync=True)
                keep(rec)
                bar.update(1)
        finally:
            bar.close()
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"verdicts": done, "usage": usage}


def annotation_rows(pairing: Pairing, verdicts: dict, model: str, reference: str, annotator: str,
                    weighting: str) -> list[dict]:
    """The pairs and their verdicts in AlpacaEval's annotation layout (see alpaca_lib/evaluation/metrics.py), plus the
    project's fields: `dataset` when the records have it, the letter each order got
    (`verdicts`, order 0 showing the model as Output (a)), the judge's `replies`, `model_won` and `p_model`
    per order, and `prompt_version`. `preference` is 1 + the model's preference (null when unreadable):
    the mean of its two `p_model` with weighting "logprobs", of its two `model_won` otherwise."""
    rows = []
    for i, (model_rec, ref_rec) in enumerate(pairing.pairs):
        both = [verdicts[(i, 0)], verdicts[(i, 1)]]
        letters = [v["letter"] for v in both]
        won = [v["model_won"] for v in both]
        p_model = [v["p_model"] for v in both]
        if None in letters:
            preference = None
        else:
            preference = 1 + (p_model[0] + p_model[1]) / 2 if weighting == "logprobs" else 1 + (won[0] + won[1]) / 2
        row = {"instruction": request_text(model_rec), "output_1": ref_rec["output"], "generator_1": reference,
               "output_2": model_rec["output"], "generator_2": model, "annotator": annotator, "preference": preference}
        if model_rec.get("dataset"):
            row["dataset"] = model_rec["dataset"]
        row.update(verdicts=letters, replies=[v["reply"] for v in both], model_won=won, p_model=p_model,
                   prompt_version=PROMPT_VERSION)
        rows.append(row)
    return rows


def _unreadable_error(judge_name: str, rows: Sequence[dict]) -> str:
    replies = [r for row in rows for r in row["replies"]][:3]
    shown = "; ".join(repr(r[:80]) for r in replies)
    return (f"no pair got a readable verdict from {judge_name} ({len(rows)} pairs; its replies began: {shown}). "
            "A reply is read when it names one output, e.g. 'a', '(b)' or 'Output (b) is better'; fix the judge "
            "(model, --api_style, --base_url) and run the same command again: it asks again for every pair "
            "without a readable verdict.")


# ---- the run, one function per phase ----


def _check_flags(cfg: JudgeConfig) -> None:
    """Refuses a judge named twice or not at all, an --output_dir that cannot be written or is an input, and a
    local judge whose tokenizer cannot spell the verdict letters."""
    if (cfg.judge_model is None) == (cfg.judge_model_dir is None):
        raise UsageError("give either --judge_model (a judge on a server) or --judge_model_dir (a local model, "
                         "run in-process).")
    if cfg.judge_gguf_file and not cfg.judge_model_dir:
        raise UsageError("--judge_gguf_file names a file inside --judge_model_dir; give --judge_model_dir too.")
    check_output_dir(cfg.output_dir, "--output_dir")
    check_not_an_input(cfg.output_dir, "--output_dir", {"--model_outputs": cfg.model_outputs,
                                                        "--reference_outputs": cfg.reference_outputs})
    if cfg.judge_model_dir:
        check_model_source(cfg.judge_model_dir, cfg.judge_gguf_file, flag="--judge_model_dir", hub=False)
        check_judge_tokenizer(cfg.judge_model_dir, cfg.judge_gguf_file)  # before the model loads, not after
    read_board(Path(cfg.leaderboard))  # a board that cannot be read refuses the run now, before the judge is paid


def _pair_files(cfg: JudgeConfig) -> tuple[list[dict], list[dict], Pairing]:
    """Both files' records and their pairing; prints what was left out, refuses files with nothing in common."""
    model = load_outputs(cfg.model_outputs, "--model_outputs")
    reference = load_outputs(cfg.reference_outputs, "--reference_outputs")
    pairing = pair_records(model, reference)
    if not pairing.pairs:
        raise UsageError(f"{cfg.model_outputs} and {cfg.reference_outputs} share no instruction: nothing to judge. "
                         f"{pairing.report()}")
    note = pairing.report()
    if note:
        print(f"pairing: {note}")
    return model, reference, pairing


def _weighting(cfg: JudgeConfig, verdicts: dict) -> str:
    """How preferences are weighted: by the judge's probabilities ("logprobs") when they were asked for (or
    read in-process) and every readable verdict has them, else by its letters ("discrete")."""
    readable = [v for v in verdicts.values() if v["letter"] is not None]
    all_logprobs = bool(readable) and all(v["p_model"] is not None for v in readable)
    return "logprobs" if (cfg.logprobs or cfg.judge_model_dir) and all_logprobs else "discrete"


def _summary(cfg: JudgeConfig, names: tuple[str, str], rows: list[dict], pairing: Pairing, judge_name: str,
             usage: dict, price: Optional[Sequence[float]]) -> dict:
    """summary.json's content: AlpacaEval's numbers, the judge, its usage and cost, and the pairing."""
    summary = {
        "model": names[0], "reference": names[1], **summarize(rows), "judge_model": judge_name,
        "prompt_version": PROMPT_VERSION, "usage": usage,
        "n_only_in_model": len(pairing.only_model), "n_only_in_reference": len(pairing.only_reference),
        "n_duplicated": len(pairing.duplicated), "outputs_sha256": outputs_digest(rows),
        "model_source": model_source(cfg.model_outputs),
        "prompt_template": prompt_format_of(cfg.model_outputs),
        "reference_prompt_template": prompt_format_of(cfg.reference_outputs),
    }
    summary["cost_usd"] = None if price is None else (
        usage["prompt_tokens"] * price[0] + usage["completion_tokens"] * price[1]) / 1e6
    return summary


def run_judge(cfg: JudgeConfig) -> JudgeResult:
    """`eval_model.py judge`: checks the inputs, judges every pair (resuming a killed run), then writes
    summary.json, annotations.json, the report, the chart and the leaderboard row.

    Raises:
        UsageError: inputs that cannot work (nothing is created then), or no readable verdict at all.
    """
    _check_flags(cfg)
    model, reference, pairing = _pair_files(cfg)
    prices = load_price_table(cfg.price_table)
    # What a resumed run must share: the prompt, both files, and the judge (`make_judge`'s identity).
    run = {"prompt_version": PROMPT_VERSION, "model_outputs_sha256": file_digest(cfg.model_outputs),
           "reference_outputs_sha256": file_digest(cfg.reference_outputs)}
    judge, judge_name, identity = make_judge(cfg)
    run.update(identity)
    out = Path(cfg.output_dir)  # made (by the lock) only once everything above has passed
    with output_lock(out, f"eval_model.py judge --output_dir {cfg.output_dir}"):  # one judge run per folder
        result = judge_pairs(judge, pairing, out, run)
        names = name_of(model, cfg.model_outputs), name_of(reference, cfg.reference_outputs)
        rows = annotation_rows(pairing, result["verdicts"], *names, judge_name, _weighting(cfg, result["verdicts"]))
        if all(r["preference"] is None for r in rows):
            raise UsageError(_unreadable_error(judge_name, rows))
        summary = _summary(cfg, names, rows, pairing, judge_name, result["usage"], prices.get(judge_name))
        write_results(out, summary, rows, cfg.leaderboard, out / JOURNAL_NAME, pairing.report())
    return JudgeResult(summary, rows, out)
