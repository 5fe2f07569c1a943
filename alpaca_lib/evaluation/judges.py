"""The judges: one verdict per (pair, order), from a served model or a local one run in-process.

    judge, name, identity = make_judge(cfg)        # cfg: eval_model.py judge's JudgeConfig
    for record in judge.verdicts([Task(pair=0, order=0, prompt=judge_prompt(rec, out_a, out_b))]): ...

Each judge sees the request and the two outputs as "Output (a)" and "Output (b)" under `JUDGE_PROMPT`
(version `PROMPT_VERSION`) and yields, for each `Task`, the journal's verdict record (`verdict_record`): the
letter it named (None when unreadable), whether the model won, and the model's probability when known.
`ApiJudge` asks a server and reads its reply with `alpaca_lib.evaluation.verdicts.read_verdict`; an
unreadable reply is asked again with a firmer follow-up. `InProcessJudge` reads the probabilities of the
two letters from one forward pass of a local model (`alpaca_lib.evaluation.local_judge`), so it is never
unreadable. alpaca_lib/evaluation/judge.py runs them over every pair, resumably.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from alpaca_lib.core.prompt import request_text
from alpaca_lib.evaluation.config import JudgeConfig
from alpaca_lib.evaluation.local_judge import LocalJudge
from alpaca_lib.evaluation.outputs import LocalModel
from alpaca_lib.evaluation.verdicts import read_verdict
from alpaca_lib.llm.client import CompletionClient, GenerationError

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
RETRY_TEMPERATURE = 0.7  # a retry at temperature 0 repeats the unreadable reply; this one can differ
FOLLOW_UP = ("\n\nYour reply was: {reply}\nThat does not name one output. Reply with a single letter and nothing "
             "else: a if Output (a) is better, b if Output (b) is better.")


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


@dataclass
class Task:
    """One verdict to get: pair `pair` shown in order `order` (0: the model as Output (a); 1: as Output (b))."""

    pair: int
    order: int
    prompt: str

    @property
    def model_letter(self) -> str:
        return "a" if self.order == 0 else "b"


def verdict_record(task: Task, reply: str, letter: Optional[str], p_first: Optional[float], attempts: int,
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
        return verdict_record(task, choice.text, letter, p_first, attempt + 1, usage)

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
                yield verdict_record(task, f"P(a) = {p_a:.4f}", letter, p_a, 1,
                                     {"prompt_tokens": 0, "completion_tokens": 0})


class LazyInProcessJudge:
    """An `InProcessJudge` whose model loads only when a verdict is asked for: a rerun of a finished run
    loads nothing."""

    def __init__(self, model_dir: str, gguf_file: Optional[str], dtype: str, batch_size: int):
        self.model_dir, self.gguf_file, self.dtype, self.batch_size = model_dir, gguf_file, dtype, batch_size

    def verdicts(self, tasks: Sequence[Task]):
        local = LocalJudge.load(self.model_dir, self.gguf_file, self.dtype)
        yield from InProcessJudge(local, self.batch_size).verdicts(tasks)


def make_judge(cfg: JudgeConfig) -> tuple[Any, str, dict]:
    """The judge `cfg` names (--judge_model_dir in-process, else --judge_model on a server).

    Returns:
        (the judge, its name for the summary, what identifies it in the journal: a resumed run must have the
        same; for a server not its address, as a local server may come back on another port)
    """
    if cfg.judge_model_dir:
        name = Path(cfg.judge_model_dir).resolve().name + (f"/{cfg.judge_gguf_file}" if cfg.judge_gguf_file else "")
        identity = {"judge_model": name, "judge": LocalModel.fingerprint(cfg.judge_model_dir, cfg.judge_gguf_file)}
        judge = LazyInProcessJudge(cfg.judge_model_dir, cfg.judge_gguf_file, cfg.judge_dtype, cfg.judge_batch_size)
        return judge, name, identity
    settings = dict(base_url=cfg.base_url, api_key=cfg.api_key, api_style=cfg.api_style, max_tokens=4,
                    logit_bias=None, stop=[], request_timeout=cfg.request_timeout, max_retries=cfg.max_retries)
    judge = ApiJudge(CompletionClient(cfg.judge_model, temperature=0.0, **settings),
                     CompletionClient(cfg.judge_model, temperature=RETRY_TEMPERATURE, **settings),
                     cfg.max_unreadable_retries, 5 if cfg.logprobs else 0, cfg.max_concurrency)
    return judge, cfg.judge_model, {"judge_model": cfg.judge_model, "api_style": cfg.api_style}
