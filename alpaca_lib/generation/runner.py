"""The generation loop behind `generate_instruction.py`, and the export to a training file.

    python -m generate_instruction generate_instruction_following_data --output_dir=runs/regen --seed=0

Each batch: sample `num_prompt_instructions` seed tasks for each of `request_batch_size` prompts,
send them (concurrently), split the replies into items with the original filters, drop items whose
ROUGE-L against the pool exceeds 0.7 (comparing each with the seeds, everything kept before, and the
items kept earlier in the same batch), and keep the rest. The run ends once
`num_instructions_to_generate` items are kept; the last batch may take it a little past. It stops
itself, with an error, after `max_empty_batches` batches in a row that keep nothing.

The phases, as the log names them: `_open_run` (read the journal back, append a "start"), `_run_batch`
(`request_batch`, then `decide_batch`, then commit the batch to the journal), `_finish_run` (the "end").

Sampling is reproducible: batch b draws its prompts from `random.Random(f"selfinstruct:{seed}:{b}")`,
so a resumed run sends exactly the prompts the uninterrupted run would have.

One run at a time writes to an output folder (`alpaca_lib.core.locking.output_lock`): a second one is refused
before it reads or writes anything there.

Nothing here grows with the data faster than the data: the ROUGE-L pool is built once and grows by
each batch's kept items, the journal is read once at start and then only appended to, and regen.json
is rewritten (at most every `save_every_s`) from items encoded once each.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import DiskFullError, atomic_write, disk_full_as_error, jdump, jload, sha256_of
from alpaca_lib.llm.client import CompletionClient, GenerationError, redact_url
from alpaca_lib.core.journal import Journal
from alpaca_lib.llm.pricing import load_price_table
from alpaca_lib.core.locking import output_lock
from alpaca_lib.core.preflight import check_output_dir
from alpaca_lib.core.rouge import RougeLPool
from alpaca_lib.data.sources import ALPACA_FIELDS, RecordMessages, check_record

from .accounting import format_summary, summarize
from .config import GenerateConfig
from .journal import JOURNAL_NAME, JournalState, read_journal
from .postprocess import STOP_SEQUENCES, encode_prompt, load_seed_tasks, post_process_gpt3_response, strip_repeated_header

REGEN_NAME = "regen.json"
LOCK_COMMAND = "generate_instruction generate_instruction_following_data"  # how a refused run names the holder
ROUGE_THRESHOLD = 0.7  # the original's "> 0.7 is a near-duplicate"
MOST_SIMILAR_K = 10
REPLY_HEAD_CHARS = 1000  # what the journal keeps of an oversized reply, for a look at what the server sent


class GenerationStalled(GenerationError):
    """Batch after batch kept nothing (--max_empty_batches): the run stopped itself."""


def batch_prompt_ids(seed: int, batch: int, size: int, n_seeds: int, num_prompt_instructions: int) -> list[list[int]]:
    """The seed-task indices of each prompt of a batch; a pure function of (seed, batch)."""
    rng = random.Random(f"selfinstruct:{seed}:{batch}")
    return [rng.sample(range(n_seeds), num_prompt_instructions) for _ in range(size)]


def request_seed(seed: int, batch: int, slot: int) -> int:
    """The `seed` sent with a request, so servers that honour it answer the same prompt the same way."""
    digest = hashlib.sha256(f"{seed}:{batch}:{slot}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


_NEEDS = "{where} needs string 'instruction', 'input' and 'output'; found {%s}. Fix or move the file to start afresh."
_REGEN_ITEM = RecordMessages(not_object=_NEEDS % "type", missing=None, not_string=_NEEDS % "keys")
_EXPORT_ITEM = RecordMessages(not_object="{where} is {type}, expected an object", missing=None,
                              not_string="{where} has no string {key!r} (keys {keys}); expected instruction, input, output")


def _load_legacy_regen(path: Path) -> list[dict]:
    items = jload(path)
    if not isinstance(items, list):
        raise UsageError(f"{path}: expected a JSON list of generated items; found {type(items).__name__}")
    for i, it in enumerate(items):
        check_record(it, f"{path}: item {i}", ALPACA_FIELDS, messages=_REGEN_ITEM, error=UsageError)
    return items


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


class RegenFile:
    """regen.json: the kept items, as the original's `jdump(items)` writes them, byte for byte.

    Each save rewrites the file atomically (temporary file, then rename), but each item is encoded
    only once, the first time it is saved: a save costs one write of the file, not an encoding of
    every item kept so far (52K items are 70 MB).

    Args:
        path: the file.
    """

    def __init__(self, path: Path):
        self.path = path
        self._encoded: list[str] = []  # items[i] as it appears in the file; items are only ever appended

    def save(self, items: list[dict]) -> None:
        """Writes `items` (the list saved before, with more appended) to the file."""
        encoded = self._encoded
        encoded.extend(_json_indented(it, 1) for it in items[len(encoded) :])
        kept = f"the previous {self.path.name} and the journal beside it, which holds every finished batch, are intact"
        with disk_full_as_error(self.path, kept), atomic_write(self.path) as f:
            if not encoded:
                f.write("[]")
                return
            f.write("[\n    ")
            f.write(encoded[0])
            for text in encoded[1:]:
                f.write(",\n    ")
                f.write(text)
            f.write("\n]")


def _json_indented(obj: Any, level: int) -> str:
    """`obj` as `json.dump(obj, indent=4, ensure_ascii=False, default=str)` writes it at nesting `level`.

    For JSON data with string keys. Strings go through the json module's own C encoder.
    """
    if isinstance(obj, str):
        return _encode_str(obj)
    if isinstance(obj, float) and math.isfinite(obj):
        return float.__repr__(obj)
    if isinstance(obj, dict) and obj:
        pad = "\n" + "    " * (level + 1)
        body = ("," + pad).join(_encode_str(key) + ": " + _json_indented(value, level + 1) for key, value in obj.items())
        return "{" + pad + body + "\n" + "    " * level + "}"
    if isinstance(obj, (list, tuple)) and obj:
        pad = "\n" + "    " * (level + 1)
        return "[" + pad + ("," + pad).join(_json_indented(value, level + 1) for value in obj) + "\n" + "    " * level + "]"
    return json.dumps(obj, ensure_ascii=False, default=str)


_encode_str = json.encoder.encode_basestring  # what json.dump(..., ensure_ascii=False) writes a str as


class _StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM stop a run cleanly, and never in the middle of committing a batch.

    SIGTERM stops it as Ctrl-C does (regen.json saved, what it holds printed), with exit status 143.
    A signal that arrives while a batch is committed (its journal line written, the in-memory items
    updated) takes effect right after, so regen.json is always saved with what the journal holds.
    Signals whose handling someone changed (ignored, say) are left alone, and so is every signal
    outside the main thread, where Python cannot handle them.
    """

    def __init__(self):
        self._previous: dict[int, Any] = {}
        self._deferring = False
        self._pending: int | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(signum) is default:
                self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self._deferring:
            self._pending = signum
        else:
            _stop(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            _stop(signum)


def _stop(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


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


@dataclass
class BatchDecision:
    """What phase two made of one batch's replies."""

    kept: list[dict]  # items kept, each with its most similar instructions and their mean similarity
    discarded: Counter  # discard counts by reason (DISCARD_REASONS)
    raw_items: int  # items parsed before any filter
    candidates: int  # items that reached the ROUGE-L check


class _Progress:
    """The progress bar and its running counts (kept, generated, discarded, tokens)."""

    def __init__(self, target: int, state: JournalState, prices: dict, progress: bool | None):
        from alpaca_lib.core.progress import progress_bar

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
            legacy = _load_legacy_regen(regen_path)
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
    signals = _StopSignals()
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


def _run_batch(run: _Run, executor: ThreadPoolExecutor, signals: _StopSignals, shown: _Progress) -> BatchDecision:
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


def request_batch(client, executor, journal: Journal, state: JournalState, batch: int, ids: list[list[int]],
                  prompts: list[str], per_request: int, seed: int, on_reply,
                  max_reply_chars: int = 65536) -> dict[int, dict]:
    """Phase one of a batch: gets a reply for every prompt, journaling each as it arrives.

    Replies an interrupted run already saved (`state.pending`) are reused, not asked for again; the rest
    are sent concurrently on `executor`, `per_request` prompts per request. A reply longer than
    `max_reply_chars` (or cut off by the client) is journaled as its first REPLY_HEAD_CHARS characters and
    its size, and comes back with "size" set: decide_batch drops it as oversized.

    Returns:
        {slot: {"text", "finish_reason"} (and "size")} for every prompt of the batch.
    Raises:
        GenerationError: a request that failed for good (its siblings' replies are journaled first).
    """
    size = len(prompts)
    replies = dict(state.pending)
    state.pending, state.pending_size = {}, 0
    missing = [slot for slot in range(size) if slot not in replies]
    groups = [missing[i : i + per_request] for i in range(0, len(missing), per_request)]
    futures = {
        executor.submit(client.complete, [prompts[slot] for slot in slots], request_seed(seed, batch, slots[0])): slots
        for slots in groups
    }
    errors = []
    for fut in as_completed(futures):
        slots = futures[fut]
        try:
            reply = fut.result()
        except GenerationError as e:
            errors.append(e)
            continue
        rec = {
            "t": "request",
            "batch": batch,
            "batch_size": size,
            "slots": slots,
            "seed_ids": [ids[slot] for slot in slots],
            "model": client.model,
            "api_style": client.api_style,
            "max_tokens": reply.max_tokens,
            "attempts": reply.attempts,
            "latency_s": round(reply.latency_s, 3),
            "usage": reply.usage,
            "choices": [_journaled_choice(slot, c, max_reply_chars) for slot, c in zip(slots, reply.choices)],
        }
        journal.append(rec)
        state.requests.append(rec)
        for choice in rec["choices"]:
            replies[choice["slot"]] = {key: v for key, v in choice.items() if key != "slot"}
        on_reply(reply)
    if errors:
        raise errors[0]
    return replies


def _journaled_choice(slot: int, choice: Any, max_reply_chars: int) -> dict[str, Any]:
    """A reply as the journal keeps it: whole, or, if oversized, its first part and its size."""
    size = choice.size if choice.size is not None else len(choice.text) if len(choice.text) > max_reply_chars else None
    if size is None:
        return {"slot": slot, "text": choice.text, "finish_reason": choice.finish_reason}
    return {"slot": slot, "text": choice.text[:REPLY_HEAD_CHARS], "finish_reason": choice.finish_reason, "size": size}


def decide_batch(replies: dict[int, dict], num_prompt_instructions: int, chat: bool, pool: RougeLPool,
                 keep_other_scripts: bool = False) -> BatchDecision:
    """Phase two of a batch: splits the replies into items with the original filters, then keeps those whose
    ROUGE-L against the pool (and the items kept before them in the batch) is at most 0.7.

    `keep_other_scripts` relaxes the filters for instructions in other scripts (post_process_gpt3_response).
    """
    discarded: Counter = Counter()
    candidates: list[dict] = []
    for slot in range(len(replies)):
        r = replies[slot]
        if r.get("size") is not None:
            discarded["oversized"] += 1
            continue
        text = strip_repeated_header(r["text"], num_prompt_instructions) if chat else r["text"]
        candidates += post_process_gpt3_response(num_prompt_instructions,
                                                  {"text": text, "finish_reason": r["finish_reason"]}, discarded,
                                                  keep_other_scripts)
    decisions = pool.filter_batch([c["instruction"] for c in candidates], ROUGE_THRESHOLD, MOST_SIMILAR_K)
    kept = []
    for c, d in zip(candidates, decisions):
        if not d.kept:
            discarded["similar"] += 1
            continue
        c["most_similar_instructions"] = d.most_similar_instructions
        c["avg_similarity_score"] = d.avg_similarity_score
        kept.append(c)
    return BatchDecision(kept, discarded, sum(discarded.values()) + len(kept), len(candidates))


def export_alpaca(input_path: str | Path, output_path: str | Path) -> int:
    """Writes Alpaca training data (instruction, input, output only) from a run's output.

    Args:
        input_path: a regen.json, a regen.journal.jsonl, or the run's output directory (its journal
            is preferred, being always complete).
        output_path: the JSON file to write (atomically), e.g. alpaca_data.json.
    Returns:
        The number of records written.
    """
    src, output_path = Path(input_path).expanduser(), Path(output_path).expanduser()
    if src.is_dir():
        src = src / JOURNAL_NAME if (src / JOURNAL_NAME).exists() else src / REGEN_NAME
    if not src.is_file():
        raise UsageError(
            f"{src} not found; pass --input_path=OUTPUT_DIR (or its regen.json / {JOURNAL_NAME})"
        )
    if src.suffix == ".jsonl":
        items = read_journal(src).items
    else:
        items = jload(src)
        if not isinstance(items, list):
            raise UsageError(f"{src}: expected a JSON list of items; found {type(items).__name__}")
    records = []
    for i, it in enumerate(items):
        check_record(it, f"{src}: item {i}", ALPACA_FIELDS, ["input"], messages=_EXPORT_ITEM, error=UsageError)
        records.append({"instruction": it["instruction"], "input": it.get("input", ""), "output": it["output"]})
    jdump(records, output_path)
    print(f"wrote {len(records)} records to {output_path}", file=sys.stderr)
    return len(records)

