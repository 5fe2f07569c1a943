"""A pairwise LLM judge: which of two models answers an evaluation set better, as a win rate.

    python eval_model.py judge --model_outputs runs/demo/model_outputs.json \
        --reference_outputs runs/base/model_outputs.json --judge_model M --base_url URL \
        --output_dir runs/judge/demo_vs_base

The records of the two files are paired by instruction (and input). For each pair the judge sees the
instruction and the two outputs as "Output (a)" and "Output (b)" under a prompt written for this
project (`JUDGE_PROMPT`, version `PROMPT_VERSION`) and answers with one letter. Every pair is judged in
both orders, so a judge that favours a position cancels out: the model's preference is 1 when it wins
both, 0 when it loses both, 0.5 when the two orders disagree (a tie). When the server returns log
probabilities for every verdict, the preference is instead the judge's probability of the model's letter
(normalised over the two letters), averaged over the two orders, as AlpacaEval 2 weights its votes.
A reply with no readable letter is asked again (`max_unreadable_retries` times), then left out and counted.

Every verdict is journaled (`judge.journal.jsonl` in the output folder) as it arrives, so a killed run
continues without paying twice; a journal of another judge, prompt or pair of files is refused.
"""

from __future__ import annotations

import math
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from alpaca_lib.journal import Journal, records_of_run

if TYPE_CHECKING:
    from alpaca_lib.evalconfig import JudgeConfig

PROMPT_VERSION = "pairwise-v1"
JUDGE_PROMPT = """You are judging two AI assistants' responses to the same request from a user.

## Request
{request}

## Output (a)
{output_a}

## Output (b)
{output_b}

Decide which output follows the request better: more helpful, correct, complete and to the point.
Ignore which one comes first, and do not prefer an output only for being longer.
Reply with a single letter and nothing else: a if Output (a) is better, b if Output (b) is better."""
LETTERS = ("a", "b")
_VERDICT = re.compile(r"^\W*(?:output\s*)?\(?([ab])\)?(?:\W|$)", re.IGNORECASE)
JOURNAL_NAME = "judge.journal.jsonl"


def pair_key(record: dict) -> tuple[str, str]:
    return record["instruction"], record.get("input", "") or ""


@dataclass
class Pairing:
    """The pairs both files hold once, and what was left out."""

    pairs: list[tuple[dict, dict]]  # (model record, reference record), in the model file's order
    only_model: list[str]
    only_reference: list[str]
    duplicated: list[str]

    def report(self) -> str:
        parts = []
        for what, keys in (("only in --model_outputs", self.only_model),
                           ("only in --reference_outputs", self.only_reference),
                           ("more than once in a file", self.duplicated)):
            if keys:
                shown = "; ".join(repr(k[:60]) for k in keys[:3])
                parts.append(f"{len(keys)} instruction(s) {what}, left out (first: {shown})")
        return ". ".join(parts)


def pair_records(model: Sequence[dict], reference: Sequence[dict]) -> Pairing:
    """Matches records by instruction (and input); never guesses for a missing or repeated one."""
    def index(records):
        seen, dup = {}, set()
        for r in records:
            k = pair_key(r)
            if k in seen:
                dup.add(k)
            seen[k] = r
        return seen, dup

    m, m_dup = index(model)
    r, r_dup = index(reference)
    duplicated = m_dup | r_dup
    pairs, done = [], set()
    for rec in model:
        k = pair_key(rec)
        if k in r and k not in duplicated and k not in done:
            pairs.append((rec, r[k]))
            done.add(k)
    return Pairing(
        pairs=pairs,
        only_model=[k[0] for k in m if k not in r and k not in duplicated],
        only_reference=[k[0] for k in r if k not in m and k not in duplicated],
        duplicated=[k[0] for k in duplicated],
    )


def judge_prompt(record: dict, output_a: str, output_b: str) -> str:
    request = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return JUDGE_PROMPT.format(request=request, output_a=output_a, output_b=output_b)


def read_verdict(text: str) -> Optional[str]:
    """The letter a reply names ("a", "(b)", "Output a", "B."), or None."""
    m = _VERDICT.match(text.strip())
    return m.group(1).lower() if m else None


def letter_probability(first_logprobs: Optional[dict[str, float]], letter: str) -> Optional[float]:
    """P(letter) among the two letters from the first token's top logprobs, or None if neither is there."""
    if not first_logprobs:
        return None
    mass = {x: 0.0 for x in LETTERS}
    for token, lp in first_logprobs.items():
        t = token.strip().strip("()").lower()
        if t in mass:
            mass[t] += math.exp(lp)
    total = mass["a"] + mass["b"]
    return mass[letter] / total if total > 0 else None


# ---- numbers ----


def preferences(verdicts: Sequence[dict], weighting: str) -> list[float]:
    """The model's preference per pair from its two verdicts (see the module docstring)."""
    prefs = []
    for v in verdicts:
        if weighting == "logprobs":
            prefs.append((v["p_model"][0] + v["p_model"][1]) / 2)
        else:
            prefs.append((v["model_won"][0] + v["model_won"][1]) / 2)
    return prefs


def length_controlled_win_rate(prefs: Sequence[float], len_model: Sequence[int], len_ref: Sequence[int]) -> Optional[float]:
    """The win rate with the output-length difference regressed out, in %, or None with under 10 pairs.

    A logistic model of the preference, p = sigmoid(theta + phi * tanh((len_model - len_ref) / sd)),
    is fitted by Newton's method on the (soft) preferences with a small L2 penalty (1e-3) that keeps it
    finite when one side wins everything; the length-controlled win rate is sigmoid(theta): the
    predicted preference at equal lengths. AlpacaEval 2 fits the same length term (with an
    instruction-difficulty term as well, which a single comparison cannot estimate).
    """
    y = np.asarray(prefs, dtype=np.float64)
    if len(y) < 10:
        return None
    d = np.asarray(len_model, dtype=np.float64) - np.asarray(len_ref, dtype=np.float64)
    sd = d.std() or 1.0
    x = np.stack([np.ones_like(d), np.tanh(d / sd)], axis=1)
    w = np.zeros(2)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) / len(y) + 1e-3 * w
        hess = (x.T * (p * (1 - p))) @ x / len(y) + 1e-3 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(100 / (1 + math.exp(-w[0])))


def summarize(verdicts: Sequence[dict], weighting: str, n_unreadable: int) -> dict[str, Any]:
    prefs = preferences(verdicts, weighting)
    discrete = [sum(v["model_won"]) for v in verdicts]
    n = len(prefs)
    len_m = [len(v["output_model"]) for v in verdicts]
    len_r = [len(v["output_reference"]) for v in verdicts]
    return {
        "win_rate": 100 * float(np.mean(prefs)) if n else None,
        "standard_error": 100 * float(np.std(prefs, ddof=1) / math.sqrt(n)) if n > 1 else None,
        "n_pairs": n,
        "n_wins": sum(d == 2 for d in discrete),
        "n_losses": sum(d == 0 for d in discrete),
        "n_ties": sum(d == 1 for d in discrete),
        "n_unreadable": n_unreadable,
        "weighting": weighting,
        "length_controlled_win_rate": length_controlled_win_rate(prefs, len_m, len_r),
        "length_controlled_method": "logistic fit of the preference on tanh(length difference / its sd); "
                                    "the rate predicted at equal lengths (see alpaca_lib/judge.py)",
        "avg_length_model": float(np.mean(len_m)) if n else None,
        "avg_length_reference": float(np.mean(len_r)) if n else None,
    }


# ---- the run ----


def judge_pairs(client, pairing: Pairing, output_dir: Path, run: dict, max_concurrency: int = 8,
                max_unreadable_retries: int = 2, logprobs: int = 5, progress: Optional[bool] = None) -> dict:
    """Judges every pair in both orders (resuming from the journal); returns verdicts and token usage.

    Returns:
        {"verdicts": [per readable pair: both letters, replies, model_won, p_model], "unreadable": [...],
         "usage": {...}, "all_logprobs": bool}
    """
    from alpaca_lib.progress import progress_bar

    jpath = output_dir / JOURNAL_NAME
    earlier = records_of_run(jpath, run, "belongs to another judging run", "Use the same settings to continue it, "
                             "or another --output_dir to start afresh.")
    done = {(rec["pair"], rec["order"]): rec for rec in earlier if rec["t"] == "verdict"}
    tasks = [(i, o) for i in range(len(pairing.pairs)) for o in (0, 1) if (i, o) not in done]
    bar = progress_bar(total=2 * len(pairing.pairs), desc="judge", initial=2 * len(pairing.pairs) - len(tasks), unit="verdict",
               dynamic_ncols=True, disable=(not progress) if progress is not None else None)

    def ask(i: int, order: int) -> dict:
        model_rec, ref_rec = pairing.pairs[i]
        a, b = (model_rec["output"], ref_rec["output"]) if order == 0 else (ref_rec["output"], model_rec["output"])
        prompt = judge_prompt(model_rec, a, b)
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        for attempt in range(1 + max_unreadable_retries):
            reply = client.complete([prompt], seed=attempt, logprobs=logprobs)
            for k in usage:
                usage[k] += reply.usage.get(k, 0)
            choice = reply.choices[0]
            letter = read_verdict(choice.text)
            if letter is not None:
                break
        model_letter = "a" if order == 0 else "b"
        return {"t": "verdict", "pair": i, "order": order, "reply": choice.text, "letter": letter,
                "attempts": attempt + 1, "model_won": None if letter is None else int(letter == model_letter),
                "p_model": letter_probability(choice.first_logprobs, model_letter) if letter else None,
                "usage": usage}

    with Journal(jpath) as journal, ThreadPoolExecutor(max_workers=max_concurrency) as pool:
        journal.append({"t": "start", "time": time.time(), "run": run}, sync=True)
        futures = {pool.submit(ask, i, o): (i, o) for i, o in tasks}
        try:
            for fut in as_completed(futures):
                rec = fut.result()
                journal.append(rec, sync=True)
                done[(rec["pair"], rec["order"])] = rec
                bar.update(1)
        finally:
            for fut in futures:
                fut.cancel()
            bar.close()

    verdicts, unreadable = [], []
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for i, (model_rec, ref_rec) in enumerate(pairing.pairs):
        both = [done[(i, 0)], done[(i, 1)]]
        for v in both:
            for k in usage:
                usage[k] += v["usage"][k]
        entry = {"instruction": model_rec["instruction"], "input": model_rec.get("input", ""),
                 "output_model": model_rec["output"], "output_reference": ref_rec["output"],
                 "letters": [v["letter"] for v in both], "replies": [v["reply"] for v in both],
                 "model_won": [v["model_won"] for v in both], "p_model": [v["p_model"] for v in both]}
        (unreadable if None in entry["model_won"] else verdicts).append(entry)
    all_logprobs = bool(verdicts) and all(p is not None for v in verdicts for p in v["p_model"])
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"verdicts": verdicts, "unreadable": unreadable, "usage": usage, "all_logprobs": all_logprobs}


def record_on_leaderboard(path: Path, row: dict) -> list[dict]:
    """Adds `row` to the CSV leaderboard at `path`, replacing the row of the same model/reference/judge."""
    import csv

    from alpaca_lib.fileio import atomic_write

    fields = ["model", "reference", "judge_model", "win_rate", "standard_error", "length_controlled_win_rate",
              "n_pairs", "weighting", "prompt_version", "updated"]
    rows = []
    if path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f)
                    if (r["model"], r["reference"], r["judge_model"]) != (row["model"], row["reference"], row["judge_model"])]
    new = {k: row.get(k, "") for k in fields}
    for k in ("win_rate", "standard_error", "length_controlled_win_rate"):
        new[k] = "" if new[k] is None else f"{float(new[k]):.2f}"
    rows.append(new)
    rows.sort(key=lambda r: -float(r["win_rate"] or 0))
    with atomic_write(path) as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


@dataclass
class JudgeResult:
    """What `run_judge` produced: the summary (as in summary.json), the verdicts, and where the files are."""

    summary: dict
    verdicts: list[dict]
    output_dir: Path

    @property
    def report_path(self) -> Path:
        return self.output_dir / "report.md"


def _name_of(records: list, path: str) -> str:
    """A side's name: its records' `generator`, else its file's name."""
    return records[0].get("generator") or Path(path).stem


def run_judge(cfg: "JudgeConfig") -> JudgeResult:
    """`eval_model.py judge`: checks the inputs, judges every pair (resuming a killed run), then writes
    summary.json, annotations.json, the report, the chart and the leaderboard row.

    Raises:
        UsageError: inputs that cannot work (nothing is created then), or no readable verdict at all.
    """
    import json

    from alpaca_lib.data import load_records
    from alpaca_lib.errors import UsageError
    from alpaca_lib.fileio import atomic_write
    from alpaca_lib.llm.client import CompletionClient
    from alpaca_lib.llm.pricing import load_price_table
    from alpaca_lib.locking import output_lock
    from alpaca_lib.outputs import file_digest
    from alpaca_lib.preflight import check_not_an_input, check_output_dir
    from alpaca_lib.report import CHART_NAME, draw_chart, write_report

    check_output_dir(cfg.output_dir, "--output_dir")
    check_not_an_input(cfg.output_dir, "--output_dir", {"--model_outputs": cfg.model_outputs,
                                                        "--reference_outputs": cfg.reference_outputs})
    fields = dict(required=("instruction", "output"), optional=("input", "dataset", "generator"))
    model = load_records(cfg.model_outputs, flag="--model_outputs", **fields)
    reference = load_records(cfg.reference_outputs, flag="--reference_outputs", **fields)
    pairing = pair_records(model, reference)
    if not pairing.pairs:
        raise UsageError(f"{cfg.model_outputs} and {cfg.reference_outputs} share no instruction: nothing to judge. "
                         f"{pairing.report()}")
    note = pairing.report()
    if note:
        print(f"pairing: {note}")
    prices = load_price_table(cfg.price_table)
    client = CompletionClient(cfg.judge_model, base_url=cfg.base_url, api_key=cfg.api_key, api_style=cfg.api_style,
                              max_tokens=4, temperature=0.0, logit_bias=None, stop=[],
                              request_timeout=cfg.request_timeout, max_retries=cfg.max_retries)
    out = Path(cfg.output_dir)  # made (by the lock) only once everything above has passed
    # What a resumed run must share (not the server's address: a local server may come back on another port).
    run = {"judge_model": cfg.judge_model, "api_style": cfg.api_style, "prompt_version": PROMPT_VERSION,
           "model_outputs_sha256": file_digest(cfg.model_outputs),
           "reference_outputs_sha256": file_digest(cfg.reference_outputs)}
    with output_lock(out, f"eval_model.py judge --output_dir {cfg.output_dir}"):  # one judge run per folder
        result = judge_pairs(client, pairing, out, run, cfg.max_concurrency, cfg.max_unreadable_retries,
                             5 if cfg.logprobs else 0)
        weighting = "logprobs" if cfg.logprobs and result["all_logprobs"] else "discrete"
        summary = {
            "model": _name_of(model, cfg.model_outputs), "reference": _name_of(reference, cfg.reference_outputs),
            **summarize(result["verdicts"], weighting, len(result["unreadable"])),
            "judge_model": cfg.judge_model, "prompt_version": PROMPT_VERSION, "usage": result["usage"],
            "n_only_in_model": len(pairing.only_model), "n_only_in_reference": len(pairing.only_reference),
            "n_duplicated": len(pairing.duplicated),
        }
        price = prices.get(cfg.judge_model)
        summary["cost_usd"] = None if price is None else (
            result["usage"]["prompt_tokens"] * price[0] + result["usage"]["completion_tokens"] * price[1]) / 1e6
        if summary["n_pairs"] == 0:
            raise UsageError(f"no pair got a readable verdict from {cfg.judge_model} ({summary['n_unreadable']} "
                             "unreadable); check that the judge answers with a letter (see annotations.json).")
        with atomic_write(out / "summary.json") as f:
            json.dump(summary, f, indent=2)
        with atomic_write(out / "annotations.json") as f:
            json.dump(result["verdicts"] + result["unreadable"], f, indent=2, ensure_ascii=False)
        with output_lock(out.parent, "eval_model.py judge (leaderboard)", name=".leaderboard.csv.lock", wait=True):
            board = record_on_leaderboard(out.parent / "leaderboard.csv",
                                          {**summary, "updated": time.strftime("%Y-%m-%d %H:%M")})
        draw_chart(out / CHART_NAME, board, [len(v["output_model"]) for v in result["verdicts"]],
                   [len(v["output_reference"]) for v in result["verdicts"]], summary["model"], summary["reference"])
        write_report(out, summary, result["verdicts"], note)
    return JudgeResult(summary, result["verdicts"], out)
