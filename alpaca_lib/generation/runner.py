"""The generation loop behind `generate_instruction.py`: open a run, walk over its batches, finish it.

    python -m generate_instruction generate_instruction_following_data --output_dir=runs/regen --seed=0

Each batch: sample `num_prompt_instructions` seed tasks for each of `request_batch_size` prompts,
send them (concurrently), split the replies into items with the original filters, drop items whose
ROUGE-L against the pool exceeds 0.7 (comparing each with the seeds, everything kept before, and the
items kept earlier in the same batch), and keep the rest (alpaca_lib/generation/batch.py). The run ends
once `num_instructions_to_generate` items are kept; the last batch may take it a little past. It stops
itself, with an error, after `max_empty_batches` batches in a row that keep nothing.

The phases, as the log names them: `_open_run` (read the journal back, append a "start"), `_run_batch`
(`request_batch`, then `decide_batch`, then commit the batch to the journal), `_finish_run` (the "end").
Ctrl-C and SIGTERM stop a run cleanly, never in the middle of committing a batch
(`alpaca_lib.core.signals.StopSignals`), with regen.json saved (alpaca_lib/generation/regen.py).

One run at a time writes to an output folder (`alpaca_lib.core.locking.output_lock`): a second one is refused
before it reads or writes anything there.

Nothing here grows with the data faster than the data: the ROUGE-L pool is built once and grows by
each batch's kept items, the journal is read once at start and then only appended to, and regen.json
is rewritten (at most every `save_every_s`) from items encoded once each.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import DiskFullError, sha256_of
from alpaca_lib.core.journal import Journal
from alpaca_lib.core.locking import output_lock
from alpaca_lib.core.preflight import check_output_dir
from alpaca_lib.core.progress import progress_bar
from alpaca_lib.core.rouge import RougeLPool
from alpaca_lib.core.signals import StopSignals
from alpaca_lib.llm.client import CompletionClient, GenerationError, redact_url
from alpaca_lib.llm.pricing import load_price_table

from .accounting import format_summary, summarize
from .batch import BatchDecision, batch_prompt_ids, decide_batch, request_batch
from .config import GenerateConfig
from .journal import JOURNAL_NAME, JournalState, read_journal
from .postprocess import STOP_SEQUENCES, encode_prompt, load_seed_tasks
from .regen import REGEN_NAME, RegenFile, load_legacy_regen

LOCK_COMMAND = "generate_instruction generate_instruction_following_data"  # how a refused run names the holder


class GenerationStalled(GenerationError):
    """Batch after batch kept nothing (--max_empty_batches): the run stopped itself."""


def _resolve_seed(cfg: GenerateConfig, state: JournalState, seeds_sha: str, prompt_sha: str, journal_path: Path) -> int:
    if not state.starts:
        return cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**31)
    prev = state.starts[-1]
    checks = [
        ("seed tasks file", prev.get("seed_tasks_sha256"), seeds_sha, "--seed_tasks_path"),
        ("meta-prompt", prev.get("prompt_sha256"), prompt_sha, "--prompt_path (and file content)"),
        ("num_prompt_instructions", prev.get("num_prompt_instructions"), cfg.num_prompt_instructions, "--num_prompt_instructions"),
        # Journals from before these settings existed ran with their defaults.
        ("keep_other_scripts", prev.get("keep_other_scripts", False), cfg.keep_other_scripts, "--keep_other_scripts"),
        ("rouge_tokenizer", prev.get("rouge_tokenizer", "words"), cfg.rouge_tokenizer, "--rouge_tokenizer"),
    ]
    if cfg.seed is not None:
        checks.append(("seed", prev.get("seed"), cfg.seed, "--seed"))
    for what, before, now, fix in checks:
        if before != now:
            raise UsageError(
                f"{journal_path} belongs to a run with a different {what} ({before!r}, now {now!r}); "
                f"resume with the same {fix}, or pass a new --output_dir to start another run"
            )
    return int(prev["seed"])


def run_generation(cfg: GenerateConfig, client: Any = None, progress: bool | None = None) -> dict[str, Any]:
    """Runs (or resumes) generation into cfg.output_dir, holding the folder's lock throughout.

    Args:
        cfg: the run's settings.
        client: a CompletionClient (tests inject one); None makes one from cfg.
        progress: show the progress bar (None: only on a terminal).
    Returns:
        The summary (also printed, and written to the journal's "end" record).
    Raises:
        OutputLockedError: another run is writing to cfg.output_dir.
    """
    cfg.check()
    check_output_dir(cfg.output_dir)
    seeds = load_seed_tasks(cfg.seed_tasks_path)
    num_prompt_instructions = cfg.num_prompt_instructions
    if num_prompt_instructions > len(seeds):
        raise UsageError(
            f"--num_prompt_instructions={num_prompt_instructions} but {cfg.seed_tasks_path} holds only {len(seeds)} "
            "seed tasks; use a smaller value"
        )
    prompt_path = Path(cfg.prompt_path)
    if not prompt_path.is_file():
        raise UsageError(
            f"meta-prompt {prompt_path} not found; pass --prompt_path=FILE, or leave it out for the prompt.txt that "
            "ships next to generate_instruction.py"
        )
    prompt_text = prompt_path.read_text(encoding="utf-8")
    prices = load_price_table(cfg.price_table)
    print(f"Loaded {len(seeds)} human-written seed instructions")
    if client is None:  # before the lock makes the output folder: a missing key leaves nothing behind
        # A reply body is read up to what --max_reply_chars of text can take in JSON (each character
        # escaped in at most 12 bytes), for every prompt of a request, so memory stays bounded.
        reply_bytes = cfg.prompts_per_request * (12 * cfg.max_reply_chars + 4096)
        client = CompletionClient.from_config(cfg, stop=STOP_SEQUENCES, max_reply_bytes=reply_bytes)
    with output_lock(cfg.output_dir, LOCK_COMMAND):
        return _generate(cfg, seeds, prompt_text, prices, client, progress)


@dataclass
class _Run:
    """An open run: its settings and inputs, the journal it appends to, and what it holds so far."""

    cfg: GenerateConfig
    seeds: list[dict]
    prompt_text: str
    client: Any
    seed: int  # the run's seed (given, or drawn by its first session and read back from the journal)
    state: JournalState
    journal: Journal
    pool: RougeLPool  # the seeds' and kept items' instructions, for the ROUGE-L check
    regen: RegenFile

    @property
    def chat(self) -> bool:
        return self.client.api_style == "chat"


class _Progress:
    """The progress bar and its running counts (kept, generated, discarded, tokens)."""

    def __init__(self, target: int, state: JournalState, prices: dict, progress: bool | None):
        self.bar = progress_bar(total=target, desc="generate", unit="instruction", initial=min(len(state.items), target),
                                disable=(not progress) if progress is not None else None, dynamic_ncols=True)
        totals = summarize(state.requests, state.batches, prices)
        self.counts = Counter(tokens=totals["total_tokens"], raw=totals["raw_items"], kept=totals["kept"])
        self.show()

    def show(self) -> None:
        c = self.counts
        self.bar.set_postfix(kept=c["kept"], generated=c["raw"], discarded=c["raw"] - c["kept"], tokens=c["tokens"],
                             refresh=False)
        self.bar.refresh()

    def on_reply(self, reply: Any) -> None:
        self.counts["tokens"] += reply.usage.get("total_tokens", 0)
        self.show()

    def on_batch(self, decision: BatchDecision) -> None:
        self.counts["raw"] += decision.raw_items
        self.counts["kept"] += len(decision.kept)
        self.bar.update(min(len(decision.kept), max(0, self.bar.total - self.bar.n)))
        self.show()


def _generate(cfg: GenerateConfig, seeds: list[dict], prompt_text: str, prices: dict, client: Any,
              progress: bool | None) -> dict[str, Any]:
    run = _open_run(cfg, seeds, prompt_text, client)
    try:
        stalled = _run_batches(run, prices, progress)
        summary = _finish_run(run, prices)
    finally:
        run.journal.close()
    print(format_summary(summary, cfg.base_url))
    print(f"{len(run.state.items)} instructions in {run.regen.path}")
    if stalled:
        raise GenerationStalled(_stall_message(cfg, stalled, summary, run.journal.path))
    return summary


def _stall_message(cfg: GenerateConfig, discarded: Counter, summary: dict[str, Any], journal_path: Path) -> str:
    """Why a run stopped itself: what the empty batches dropped, what the run spent, what to look at."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in discarded.most_common() if n) or "no items in the replies"
    cost = (f"${summary['cost_usd']:.4f} (estimate from the price table)" if summary["cost_usd"] is not None
            else f"cost unknown (no price for {', '.join(summary['unpriced_models'])})")
    return (
        f"stopped: the last {cfg.max_empty_batches} batches ({cfg.max_empty_batches * cfg.request_batch_size} "
        f"prompts) kept nothing; dropped: {reasons}. Spent so far: {summary['requests']} requests, "
        f"{summary['total_tokens']} tokens, {cost}. The replies are in {journal_path} (its \"request\" lines): check "
        "the server, --model_name, --api_style and --prompt_path, then re-run the same command to go on "
        "(--max_empty_batches sets how many batches in a row may keep nothing)."
    )


def _open_run(cfg: GenerateConfig, seeds: list[dict], prompt_text: str, client: Any) -> _Run:
    """Reads the journal back (if any), checks that it belongs to this run, and appends this session's "start"."""
    out = Path(cfg.output_dir)
    seeds_sha = sha256_of(Path(cfg.seed_tasks_path).read_bytes())
    prompt_sha = sha256_of(prompt_text)
    jpath, regen_path = out / JOURNAL_NAME, out / REGEN_NAME
    state = read_journal(jpath, repair=True) if jpath.exists() else JournalState()
    seed = _resolve_seed(cfg, state, seeds_sha, prompt_sha, jpath)
    journal = Journal(jpath)
    try:
        if not state.starts and regen_path.exists():
            # A regen.json without a journal (e.g. from the original script): keep its items, as it did.
            legacy = load_legacy_regen(regen_path)
            rec = {"t": "batch", "batch": -1, "imported": True, "kept": len(legacy), "items": legacy}
            journal.append(rec, sync=True)
            state.items.extend(legacy)
            state.batches.append({key: v for key, v in rec.items() if key != "items"})
        if state.items:
            print(f"Loaded {len(state.items)} machine-generated instructions")
        if cfg.keep_other_scripts and cfg.rouge_tokenizer == "words":
            print("Note: with --rouge_tokenizer=words an instruction with no [a-z0-9] in it scores 0 against every "
                  "other, so none is dropped as similar; --rouge_tokenizer=chars compares them character by character")
        # No secret reaches the journal: the key is left out, a password in the address is cut.
        settings = {key: v for key, v in asdict(cfg).items() if key != "api_key"}
        settings["base_url"] = redact_url(cfg.base_url)
        journal.append(
            {
                "t": "start",
                "time": time.time(),
                "seed": seed,
                "seed_tasks_sha256": seeds_sha,
                "prompt_sha256": prompt_sha,
                "num_prompt_instructions": cfg.num_prompt_instructions,
                "keep_other_scripts": cfg.keep_other_scripts,
                "rouge_tokenizer": cfg.rouge_tokenizer,
                "api_style": client.api_style,
                "resumed": bool(state.starts),
                "settings": settings,
            },
            sync=True,
        )
        state.starts.append({"seed": seed})
        pool = RougeLPool([s["instruction"] for s in seeds] + [it["instruction"] for it in state.items],
                          workers=cfg.num_cpus, tokenizer=cfg.rouge_tokenizer)
    except BaseException:
        journal.close()
        raise
    return _Run(cfg, seeds, prompt_text, client, seed, state, journal, pool, RegenFile(regen_path))


def _run_batches(run: _Run, prices: dict, progress: bool | None) -> Counter | None:
    """Runs batches until the target is kept (or --max_batches); regen.json is saved however the loop ends.

    Returns:
        None, or, when --max_empty_batches batches in a row kept nothing, what they dropped (by reason).
    """
    cfg, state = run.cfg, run.state
    target = cfg.num_instructions_to_generate
    shown = _Progress(target, state, prices, progress)
    last_save = time.monotonic()
    unsaved = False
    batches_run = 0
    empty = Counter()  # what the batches since the last one that kept something dropped, by reason
    empty_batches = 0
    stopped = True  # until the loop ends on its own
    executor = ThreadPoolExecutor(max_workers=cfg.max_concurrency or cfg.request_batch_size)
    signals = StopSignals()  # Ctrl-C and SIGTERM stop the run, but never while a batch is committed
    try:
        signals.install()
        while len(state.items) < target:
            if cfg.max_batches is not None and batches_run >= cfg.max_batches:
                print(f"Stopped after --max_batches={cfg.max_batches} batches; re-run to continue")
                break
            decision = _run_batch(run, executor, signals, shown)
            batches_run += 1
            unsaved = True
            if time.monotonic() - last_save >= cfg.save_every_s:
                run.regen.save(state.items)
                last_save, unsaved = time.monotonic(), False
            if decision.kept:
                empty, empty_batches = Counter(), 0
            else:
                empty.update(decision.discarded)
                empty_batches += 1
                if empty_batches >= cfg.max_empty_batches:
                    stopped = False
                    return empty
        stopped = False
    finally:
        signals.restore()
        executor.shutdown(wait=False, cancel_futures=True)
        shown.bar.close()
        saved = True
        if unsaved or not run.regen.path.exists():
            try:
                run.regen.save(state.items)
            except DiskFullError:
                if not stopped:
                    raise
                saved = False  # the error on its way out (likely the same full disk) is the one to report
        if stopped and saved:  # an error, Ctrl-C or SIGTERM: what the file holds now, before the error is reported
            print(f"{len(state.items)} instructions in {run.regen.path} (the same as in the journal); "
                  "re-run the same command to resume")


def _run_batch(run: _Run, executor: ThreadPoolExecutor, signals: StopSignals, shown: _Progress) -> BatchDecision:
    """One batch: asks for its replies, decides which items to keep, and commits it to the journal."""
    cfg, state = run.cfg, run.state
    b = state.next_batch
    size = state.pending_size or cfg.request_batch_size
    ids = batch_prompt_ids(run.seed, b, size, len(run.seeds), cfg.num_prompt_instructions)
    prompts = [encode_prompt([run.seeds[i] for i in row], run.prompt_text) for row in ids]

    t0 = time.monotonic()
    replies = request_batch(run.client, executor, run.journal, state, b, ids, prompts,
                            1 if run.chat else cfg.prompts_per_request, run.seed, shown.on_reply,
                            cfg.max_reply_chars)
    request_s = time.monotonic() - t0

    t1 = time.monotonic()
    decision = decide_batch(replies, cfg.num_prompt_instructions, run.chat, run.pool, cfg.keep_other_scripts)
    rec = {
        "t": "batch",
        "batch": b,
        "prompts": size,
        "raw_items": decision.raw_items,
        "candidates": decision.candidates,
        "kept": len(decision.kept),
        "discarded": dict(decision.discarded),
        "items": decision.kept,
    }
    with signals.deferred():  # the journal line and the state that regen.json is saved from agree
        run.journal.append(rec, sync=True)
        state.items.extend(decision.kept)
        state.batches.append({key: v for key, v in rec.items() if key != "items"})
        state.next_batch = b + 1
    shown.on_batch(decision)
    shown.bar.write(
        f"Batch {b}: requests took {request_s:.2f}s, processing took {time.monotonic() - t1:.2f}s; "
        f"generated {decision.raw_items} instructions, kept {len(decision.kept)}"
    )
    return decision


def _finish_run(run: _Run, prices: dict) -> dict[str, Any]:
    """The run's summary, appended to the journal as its "end" record."""
    summary = summarize(run.state.requests, run.state.batches, prices)
    summary["machine_instructions"] = len(run.state.items)
    run.journal.append({"t": "end", "time": time.time(), "summary": summary}, sync=True)
    return summary
