"""A pairwise LLM judge: which of two models answers an evaluation set better, as AlpacaEval's win rate.

    python eval_model.py judge --model_outputs runs/demo/model_outputs.json \
        --reference_outputs runs/base/model_outputs.json --judge_model M --base_url URL \
        --output_dir runs/judge/demo_vs_base
    python eval_model.py judge ... --judge_model_dir runs/judge-model        # a local model, in-process
    python eval_model.py score --annotations runs/judge/demo_vs_base/annotations.json --output_dir D

The records of the two files are paired by their request: the instruction, then the input after a blank
line when a record has one (`alpaca_lib.core.prompt.request_text`, AlpacaEval's form), so a file that keeps
the input apart pairs with one that does not. For each pair the judge sees that request and the two
outputs as "Output (a)" and "Output (b)" under a prompt written for this project (`JUDGE_PROMPT`,
version `PROMPT_VERSION`). Every pair is judged in both orders, so a judge that favours a position
cancels out: the model's preference is 1 when it wins both, 0 when it loses both, 0.5 when the two
orders disagree (a tie). When every verdict comes with the judge's probabilities of the two
letters (an API's logprobs, or `InProcessJudge`), the preference is instead the model's letter's
probability averaged over the two orders, as AlpacaEval 2 weights its votes.

A served judge's reply is read by `alpaca_lib.evaluation.verdicts.read_verdict`; an unreadable one is asked again
with a firmer follow-up at a temperature above 0 (`ApiJudge`), then left out and counted. The pairs land
in `annotations.json` in AlpacaEval's layout, and the numbers are AlpacaEval's, from its own code
(alpaca_lib/evaluation/metrics.py), with the judge's diagnostics beside them.

Every verdict is journaled (`judge.journal.jsonl` in the output folder) as it arrives, so a killed run
continues without paying twice, and a rerun asks again only where no readable verdict was journaled; a
journal of another judge, prompt or pair of files is refused.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from alpaca_lib.core.journal import Journal, records_of_run
from alpaca_lib.llm.client import GenerationError
from alpaca_lib.core.prompt import request_text
from alpaca_lib.evaluation.verdicts import read_verdict

if TYPE_CHECKING:
    from alpaca_lib.evaluation.config import JudgeConfig, ScoreConfig

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
JOURNAL_NAME = "judge.journal.jsonl"


def pair_key(record: dict) -> str:
    return request_text(record)


@dataclass
class Pairing:
    """The pairs both files hold once, and what was left out."""

    pairs: list[tuple[dict, dict]]  # (model record, reference record), in the model file's order
    only_model: list[str]
    only_reference: list[str]
    duplicated: list[str]

    def report(self, reference_flag: str = "--reference_outputs") -> str:
        parts = []
        for what, keys in (("only in --model_outputs", self.only_model),
                           (f"only in {reference_flag}", self.only_reference),
                           ("more than once in a file", self.duplicated)):
            if keys:
                shown = "; ".join(repr(k[:60]) for k in keys[:3])
                parts.append(f"{len(keys)} instruction(s) {what}, left out (first: {shown})")
        return ". ".join(parts)


def pair_records(model: Sequence[dict], reference: Sequence[dict]) -> Pairing:
    """Matches records by their request (`pair_key`); never guesses for a missing or repeated one."""
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
        only_model=[k for k in m if k not in r and k not in duplicated],
        only_reference=[k for k in r if k not in m and k not in duplicated],
        duplicated=sorted(duplicated),
    )


def judge_prompt(record: dict, output_a: str, output_b: str) -> str:
    return JUDGE_PROMPT.format(request=request_text(record), output_a=output_a, output_b=output_b)


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


# ---- the judges: one verdict per (pair, order) ----

RETRY_TEMPERATURE = 0.7  # a retry at temperature 0 repeats the unreadable reply; this one can differ
FOLLOW_UP = ("\n\nYour reply was: {reply}\nThat does not name one output. Reply with a single letter and nothing "
             "else: a if Output (a) is better, b if Output (b) is better.")


@dataclass
class Task:
    """One verdict to get: pair `pair` shown in order `order` (0: the model as Output (a); 1: as Output (b))."""

    pair: int
    order: int
    prompt: str

    @property
    def model_letter(self) -> str:
        return "a" if self.order == 0 else "b"


def _verdict(task: Task, reply: str, letter: Optional[str], p_first: Optional[float], attempts: int,
             usage: dict) -> dict:
    """The journal's record of one verdict."""
    p_model = None if p_first is None or letter is None else (p_first if task.order == 0 else 1 - p_first)
    return {"t": "verdict", "pair": task.pair, "order": task.order, "reply": reply, "letter": letter,
            "attempts": attempts, "model_won": None if letter is None else int(letter == task.model_letter),
            "p_model": p_model, "usage": usage}


class ApiJudge:
    """A judge behind an OpenAI-compatible server: it writes a verdict, which `read_verdict` reads.

    A reply that names no single output is asked again (`max_unreadable_retries` times) with a firmer
    follow-up that quotes it, at `RETRY_TEMPERATURE`, so a retry is never the same request as the first ask.

    Args:
        client: the judge's client (temperature 0) for the first ask.
        retry_client: the same judge at `RETRY_TEMPERATURE`, for retries.
    """

    def __init__(self, client, retry_client, max_unreadable_retries: int = 2, logprobs: int = 5,
                 max_concurrency: int = 8):
        self.client, self.retry_client = client, retry_client
        self.max_unreadable_retries, self.logprobs, self.max_concurrency = max_unreadable_retries, logprobs, max_concurrency

    def ask(self, task: Task) -> dict:
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        prompt, client = task.prompt, self.client
        for attempt in range(1 + self.max_unreadable_retries):
            reply = client.complete([prompt], seed=attempt, logprobs=self.logprobs)
            for k in usage:
                usage[k] += reply.usage.get(k, 0)
            choice = reply.choices[0]
            letter = read_verdict(choice.text)
            if letter is not None:
                break
            prompt, client = task.prompt + FOLLOW_UP.format(reply=choice.text.strip()[:200] or "(empty)"), self.retry_client
        p_first = letter_probability(choice.first_logprobs, "a") if letter else None
        return _verdict(task, choice.text, letter, p_first, attempt + 1, usage)

    def verdicts(self, tasks: Sequence[Task]):
        """Yields each task's verdict record as it arrives (requests run concurrently)."""
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = [pool.submit(self.ask, t) for t in tasks]
            errors = []  # a request that failed for good is raised once the other verdicts have been yielded
            try:
                for fut in as_completed(futures):
                    try:
                        yield fut.result()
                    except GenerationError as e:
                        errors.append(e)
            finally:
                for fut in futures:
                    fut.cancel()
        if errors:
            raise errors[0]


class InProcessJudge:
    """A local model as judge (`alpaca_lib.evaluation.local_judge.LocalJudge`): the probability of each letter from
    one forward pass per order; its verdict is the likelier letter, so no verdict is unreadable."""

    def __init__(self, local, batch_size: int = 8):
        self.local, self.batch_size = local, batch_size

    def verdicts(self, tasks: Sequence[Task]):
        for start in range(0, len(tasks), self.batch_size):
            chunk = tasks[start:start + self.batch_size]
            for task, p_a in zip(chunk, self.local.p_first([t.prompt for t in chunk], self.batch_size)):
                letter = "a" if p_a >= 0.5 else "b"
                yield _verdict(task, f"P(a) = {p_a:.4f}", letter, p_a, 1, {"prompt_tokens": 0, "completion_tokens": 0})


def judge_pairs(judge, pairing: Pairing, output_dir: Path, run: dict, progress: Optional[bool] = None) -> dict:
    """Gets a readable verdict for every pair in both orders, resuming from the journal: verdicts already
    read are kept; unreadable ones are asked again.

    Returns:
        {"verdicts": {(pair, order): the latest record}, "usage": tokens paid for over all runs}
    """
    from alpaca_lib.core.progress import progress_bar

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


# ---- the files a run writes ----


@dataclass
class JudgeResult:
    """What `run_judge` or `run_score` produced: the summary (as in summary.json), the annotation rows, and
    where the files are."""

    summary: dict
    rows: list[dict]
    output_dir: Path

    @property
    def report_path(self) -> Path:
        return self.output_dir / "report.md"


def _name_of(records: list, path: str) -> str:
    """A side's name: its records' `generator`, else its file's name."""
    return records[0].get("generator") or Path(path).stem


def write_results(out: Path, summary: dict, rows: list[dict], leaderboard: str, pairing_note: str = "",
                  annotations: bool = True) -> None:
    """summary.json, annotations.json (unless `annotations` is False), the leaderboard row, the chart and
    the report. A full disk is one error line; what the files are made from stays where it was (the
    judge's journal, or the annotations file), so the same command writes them once there is room."""
    import json

    from alpaca_lib.evaluation import leaderboard as board_lib
    from alpaca_lib.core.fileio import atomic_write, disk_full_as_error
    from alpaca_lib.core.locking import output_lock
    from alpaca_lib.evaluation.report import CHART_NAME, draw_chart, write_report

    source = out / JOURNAL_NAME if annotations else summary.get("annotations", "the annotations file")
    kept = f"the verdicts are in {source}, so the same command writes these files once there is room"
    with disk_full_as_error(out, kept):
        with atomic_write(out / "summary.json") as f:
            json.dump(summary, f, indent=2)
        if annotations:
            with atomic_write(out / "annotations.json") as f:
                json.dump(rows, f, indent=2, ensure_ascii=False)
        board_path = Path(leaderboard)
        with output_lock(board_path.parent, "eval_model.py (leaderboard)", name=f".{board_path.name}.lock", wait=True):
            board = board_lib.record(board_path, {**summary, "judge_reliable": not summary["judge_warnings"],
                                                  "updated": time.strftime("%Y-%m-%d %H:%M")})
        readable = [r for r in rows if r["preference"] is not None]
        draw_chart(out / CHART_NAME, board, [len(r["output_2"]) for r in readable],
                   [len(r["output_1"]) for r in readable], summary["outputs_sha256"], summary["model"],
                   summary["reference"])
        write_report(out, summary, rows, pairing_note)


def run_judge(cfg: "JudgeConfig") -> JudgeResult:
    """`eval_model.py judge`: checks the inputs, judges every pair (resuming a killed run), then writes
    summary.json, annotations.json, the report, the chart and the leaderboard row.

    Raises:
        UsageError: inputs that cannot work (nothing is created then), or no readable verdict at all.
    """
    from alpaca_lib.evaluation import leaderboard as board_lib
    from alpaca_lib.data.tokenizing import load_records
    from alpaca_lib.core.errors import UsageError
    from alpaca_lib.llm.pricing import load_price_table
    from alpaca_lib.core.locking import output_lock
    from alpaca_lib.evaluation.metrics import summarize
    from alpaca_lib.evaluation.outputs import LocalModel, file_digest
    from alpaca_lib.core.preflight import check_model_source, check_not_an_input, check_output_dir

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
    # What a resumed run must share (not the server's address: a local server may come back on another port).
    run = {"prompt_version": PROMPT_VERSION, "model_outputs_sha256": file_digest(cfg.model_outputs),
           "reference_outputs_sha256": file_digest(cfg.reference_outputs)}
    if cfg.judge_model_dir:
        judge_name = Path(cfg.judge_model_dir).resolve().name + (f"/{cfg.judge_gguf_file}" if cfg.judge_gguf_file else "")
        run.update(judge_model=judge_name, judge=LocalModel.fingerprint(cfg.judge_model_dir, cfg.judge_gguf_file))

        class _Lazy:  # the model loads only when a verdict is missing
            def verdicts(self, tasks):
                from alpaca_lib.evaluation.local_judge import LocalJudge

                local = LocalJudge.load(cfg.judge_model_dir, cfg.judge_gguf_file, cfg.judge_dtype)
                yield from InProcessJudge(local, cfg.judge_batch_size).verdicts(tasks)

        judge = _Lazy()
    else:
        from alpaca_lib.llm.client import CompletionClient

        judge_name = cfg.judge_model
        run.update(judge_model=judge_name, api_style=cfg.api_style)
        settings = dict(base_url=cfg.base_url, api_key=cfg.api_key, api_style=cfg.api_style, max_tokens=4,
                        logit_bias=None, stop=[], request_timeout=cfg.request_timeout, max_retries=cfg.max_retries)
        judge = ApiJudge(CompletionClient(cfg.judge_model, temperature=0.0, **settings),
                         CompletionClient(cfg.judge_model, temperature=RETRY_TEMPERATURE, **settings),
                         cfg.max_unreadable_retries, 5 if cfg.logprobs else 0, cfg.max_concurrency)
    out = Path(cfg.output_dir)  # made (by the lock) only once everything above has passed
    with output_lock(out, f"eval_model.py judge --output_dir {cfg.output_dir}"):  # one judge run per folder
        result = judge_pairs(judge, pairing, out, run)
        readable = [v for v in result["verdicts"].values() if v["letter"] is not None]
        all_logprobs = bool(readable) and all(v["p_model"] is not None for v in readable)
        weighting = "logprobs" if (cfg.logprobs or cfg.judge_model_dir) and all_logprobs else "discrete"
        names = _name_of(model, cfg.model_outputs), _name_of(reference, cfg.reference_outputs)
        rows = annotation_rows(pairing, result["verdicts"], *names, judge_name, weighting)
        if all(r["preference"] is None for r in rows):
            raise UsageError(_unreadable_error(judge_name, rows))
        summary = {
            "model": names[0], "reference": names[1], **summarize(rows), "judge_model": judge_name,
            "prompt_version": PROMPT_VERSION, "usage": result["usage"],
            "n_only_in_model": len(pairing.only_model), "n_only_in_reference": len(pairing.only_reference),
            "n_duplicated": len(pairing.duplicated), "outputs_sha256": board_lib.outputs_digest(rows),
            "model_source": board_lib.model_source(cfg.model_outputs),
        }
        price = prices.get(judge_name)
        summary["cost_usd"] = None if price is None else (
            result["usage"]["prompt_tokens"] * price[0] + result["usage"]["completion_tokens"] * price[1]) / 1e6
        write_results(out, summary, rows, cfg.leaderboard, note)
    return JudgeResult(summary, rows, out)


ANNOTATION_KEYS = ("instruction", "output_1", "output_2", "preference")


def load_annotations(path: str) -> list[dict]:
    """Annotation rows in AlpacaEval's layout (the project's annotations.json, or one AlpacaEval published).

    Raises:
        UsageError: not a JSON list of such rows, or rows of more than one model or reference.
    """
    import json

    from alpaca_lib.core.errors import UsageError

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


REFSCORE_NAME = "rouge.json"


def score_against_references(model_outputs: str, references: str) -> dict:
    """ROUGE-L (alpaca_lib/evaluation/refscore.py) of each model output against its reference, paired by instruction
    request (`pair_key`): {"rouge_l": the mean, "n_records", "per_record": [{"instruction", "rouge_l"}], ...},
    where each record's `instruction` is its request (its input, if any, after a blank line)."""
    from alpaca_lib.data.tokenizing import load_records
    from alpaca_lib.core.errors import UsageError
    from alpaca_lib.evaluation.refscore import rouge_l

    fields = dict(required=("instruction", "output"), optional=("input", "dataset", "generator"))
    model = load_records(model_outputs, flag="--model_outputs", **fields)
    reference = load_records(references, flag="--references", **fields)
    pairing = pair_records(model, reference)
    if not pairing.pairs:
        raise UsageError(f"{model_outputs} and {references} share no instruction: nothing to score. "
                         f"{pairing.report('--references')}")
    scores = rouge_l([m["output"] for m, _ in pairing.pairs], [r["output"] for _, r in pairing.pairs])
    return {"model": _name_of(model, model_outputs), "references": str(references),
            "rouge_l": sum(scores) / len(scores), "n_records": len(scores), "pairing": pairing.report("--references"),
            "per_record": [{"instruction": request_text(m), "rouge_l": s}
                           for (m, _), s in zip(pairing.pairs, scores)]}


def run_score(cfg: "ScoreConfig") -> Optional[JudgeResult]:
    """`eval_model.py score`: with --annotations, summary.json, the leaderboard row, the report and the chart
    recomputed from them, without asking any judge; with --model_outputs and --references, rouge.json
    (ROUGE-L per record and overall). Returns the annotations' result (None without --annotations)."""
    import json

    from alpaca_lib.evaluation import leaderboard as board_lib
    from alpaca_lib.core.errors import UsageError
    from alpaca_lib.core.fileio import atomic_write
    from alpaca_lib.core.locking import output_lock
    from alpaca_lib.evaluation.metrics import summarize
    from alpaca_lib.core.preflight import check_not_an_input, check_output_dir

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
    rows = load_annotations(cfg.annotations) if cfg.annotations else None
    refscore = score_against_references(cfg.model_outputs, cfg.references) if cfg.model_outputs else None
    out = Path(cfg.output_dir)
    result = None
    with output_lock(out, f"eval_model.py score --output_dir {cfg.output_dir}"):
        if refscore is not None:
            with atomic_write(out / REFSCORE_NAME) as f:
                json.dump(refscore, f, indent=2, ensure_ascii=False)
            print(f"ROUGE-L of {refscore['model']} against the references: {refscore['rouge_l']:.4f} "
                  f"({refscore['n_records']} records); per record: {out / REFSCORE_NAME}")
        if rows is not None:
            annotators = sorted({str(r.get("annotator")) for r in rows if r.get("annotator")})
            summary = {
                "model": rows[0].get("generator_2") or "model", "reference": rows[0].get("generator_1") or "reference",
                **summarize(rows), "judge_model": ", ".join(annotators),
                "prompt_version": rows[0].get("prompt_version"), "usage": None, "cost_usd": None,
                "outputs_sha256": board_lib.outputs_digest(rows), "annotations": str(cfg.annotations),
            }
            write_results(out, summary, rows, cfg.leaderboard, annotations=False)
            result = JudgeResult(summary, rows, out)
    return result
