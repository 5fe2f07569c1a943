"""A model's answers to an evaluation set, written in AlpacaEval's format: batched, resumable, checked.

    python eval_model.py outputs --model_dir runs/demo --instructions_path eval_instructions.json \
        --output_path runs/demo/model_outputs.json

Each record of the input (AlpacaEval's JSON, or Alpaca JSON / JSON Lines) is formatted in the run's prompt
format (`--prompt_template`, alpaca_lib/evaluation/prompting.py): by default the one the model folder records
(train.py's `prompt_format.json`), else the Alpaca template (`utils.format_prompt`: its input variant when the
record has an `input`), exactly as in training; `chat` is the model's own chat template (its end-of-turn token
ends an answer too); a template file is used like Alpaca's. It is
answered either by a local model (`LocalModel`: batched generation, prompts sorted by
length, left padding, the KV cache on) or by an OpenAI-compatible server (`ServedModel`, through the
generator's `CompletionClient`: bounded retries, concurrency). The output is a JSON list in input order, in
the form AlpacaEval's own data takes: `instruction` (with the record's input, if any, after a blank line, as
AlpacaEval's judges must see it: they are shown only `instruction`), `output` (the response only),
`generator`, `dataset` when the input had it, and two keys AlpacaEval ignores: `n_tokens` (generated tokens, the EOS included) and
`stop_reason` (`eos`, or `length` when the `max_new_tokens` budget ran out), then `prompt_template` when the format
is not alpaca. Answers that repeat their prompt (a server that echoes it) are counted in one warning line at the end.

Every answer is journaled as it is made (`<output>.journal.jsonl` beside the output; a served model's with the
replica that answered, as `server`), so a killed run continues where it stopped when the same command is run
again; a journal written with another model, another input file, another prompt format or other generation
settings is refused instead of mixed in.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import atomic_write, disk_full_as_error, sha256_of
from alpaca_lib.core.journal import Journal, records_of_run
from alpaca_lib.core.locking import output_lock
from alpaca_lib.core.modeling import model_folder_digest
from alpaca_lib.core.precision import auto_dtype, emulation_warning
from alpaca_lib.core.preflight import check_model_source, check_output_file
from alpaca_lib.core.progress import progress_bar
from alpaca_lib.core.prompt import request_text
from alpaca_lib.core.weightfiles import check_local_weights
from alpaca_lib.data.formats import PromptFormat, end_of_turn_token
from alpaca_lib.data.json_reader import load_records
from alpaca_lib.evaluation.config import OutputsConfig
from alpaca_lib.evaluation.prompting import (  # noqa: F401
    chat_tokenizer,
    check_journal_format,
    choose_format,
    echo_warning,
    echoed,
    journal_settings,
    prompt_of,
    served_api_style,
)
from alpaca_lib.evaluation.provenance import format_mismatch_warning
from alpaca_lib.evaluation.sampling import RowSampler
from alpaca_lib.evaluation.settings import GenerationSettings, journal_path
from alpaca_lib.llm.client import CompletionClient, GenerationError

INSTRUCTION_FIELDS = ("instruction",)
OPTIONAL_FIELDS = ("input", "output", "dataset", "generator")
EOS, LENGTH = "eos", "length"


@dataclass
class Answer:
    """One generated response."""

    output: str
    n_tokens: int
    stop_reason: str  # EOS or LENGTH
    server: Optional[str] = None  # a served model: the replica (--base_url address) that answered


def load_instructions(path: str) -> list[dict]:
    """Reads an evaluation set: AlpacaEval JSON or Alpaca JSON / JSON Lines; only `instruction` is required.

    Raises:
        DataError: the file, the record (and line) and what is wrong, as for training data.
    """
    return load_records(path, required=INSTRUCTION_FIELDS, optional=OPTIONAL_FIELDS, flag="--instructions_path")


# ---- local model ----


def resolve_dtype(dtype: str, device: Optional[str] = None, flag: str = "--dtype") -> str:
    """The dtype a local model runs in: "auto" by `alpaca_lib.core.precision.auto_dtype`, any other name as given,
    with one warning line on stderr where that name is a half precision this device only emulates."""
    if dtype == "auto":
        return auto_dtype(device)
    warning = emulation_warning(dtype, f"{flag} {dtype}", f"{flag} auto runs {auto_dtype(device)} here", device)
    if warning and warning not in _WARNED:
        _WARNED.add(warning)
        print(warning, file=sys.stderr, flush=True)
    return dtype


_WARNED: set = set()  # each warning once a process: `outputs` resolves the dtype, then LocalModel.load again


class LocalModel:
    """A causal LM and its tokenizer on this machine, answering prompts in length-sorted batches.

    Args:
        model: the causal LM (on the device it should run on).
        tokenizer: its tokenizer.
        prompt_format: the format its prompts are in (default alpaca). Under chat, a prompt is tokenized without
            the tokenizer's special tokens (the template writes its own BOS), and the end of the assistant's turn
            (`end_of_turn_token`) ends an answer as EOS does.
    """

    def __init__(self, model, tokenizer, prompt_format: Optional[PromptFormat] = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        self.add_special_tokens = prompt_format is None or prompt_format.prompt_adds_special_tokens()
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        if prompt_format is not None and prompt_format.is_chat:
            eos.append(end_of_turn_token(tokenizer))
        self.eos_ids = sorted(set(eos) - {None})
        if not self.eos_ids:
            raise UsageError("the tokenizer and generation config name no EOS token; answers cannot end.")
        # Without a pad token (e.g. a base model), pad with EOS: the attention mask hides padding anyway.
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @classmethod
    def load(cls, model_dir: str, gguf_file: Optional[str] = None, dtype: str = "auto",
             flag: str = "--dtype", dir_flag: str = "--model_dir",
             prompt_format: Optional[PromptFormat] = None) -> "LocalModel":
        """Loads a saved model (train.py's --output_dir) or a GGUF file inside `model_dir`.

        Args:
            dtype: "auto" (`alpaca_lib.core.precision.auto_dtype`: bfloat16 where this device runs it natively),
                or a torch dtype name.
            flag: the flag that set `dtype`, for the warning about an emulated half precision.
            dir_flag: the flag that named `model_dir`, for the messages.
            prompt_format: the format of the prompts it will answer (see the class); checked against the
                tokenizer before the weights load.
        Raises:
            UsageError: not a model folder; WeightFileError (one) for a damaged weight file in it;
                PromptFormatError: chat asked of a tokenizer without a chat template.
        """
        import torch  # deferred: only a local model needs torch (a served model and --help start without it)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_model_source(model_dir, gguf_file, flag=dir_flag, hub=False)
        check_local_weights(model_dir, dir_flag, gguf_file)  # a file cut short: one line, not the loader's traceback
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = resolve_dtype(dtype, device, flag)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, **extra)
        if prompt_format is not None:
            prompt_format.check_tokenizer(tokenizer, f"{dir_flag} {model_dir}")
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), **extra).to(device)
        return cls(model, tokenizer, prompt_format)

    @staticmethod
    def fingerprint(model_dir: str, gguf_file: Optional[str] = None) -> dict[str, Any]:
        """What identifies a saved model without loading it: its folder and `model_folder_digest` (retraining
        into the same folder changes it)."""
        folder = Path(model_dir)
        return {"model": str(folder.resolve()), "gguf_file": gguf_file, "weights": model_folder_digest(folder)}

    def answer(self, prompts: Sequence[str], settings: GenerationSettings, batch_size: int,
               ids: Optional[Sequence[int]] = None) -> Iterator[tuple[list[int], list[Answer]]]:
        """Answers `prompts`, longest first, `batch_size` at a time; yields (prompt indices, answers) per batch.

        Greedy answers do not depend on `batch_size`: the tests compare batches with one prompt at a time.
        A sampled answer is drawn with a generator of its own, seeded with `settings.seed` + its record's
        index in `ids` (default: its position), so it does not depend on the prompts that share its batch
        either: a resumed run answers the remaining records as the uninterrupted run did.
        """
        import torch  # deferred: only a local model needs torch (a served model and --help start without it)
        from transformers import LogitsProcessorList

        if not prompts:
            return
        ids = list(range(len(prompts))) if ids is None else list(ids)
        encoded = self.tokenizer(list(prompts), add_special_tokens=self.add_special_tokens)["input_ids"]
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = self._left_padded([encoded[i] for i in idx])
            if settings.do_sample:  # greedy over what the row sampler leaves: its own draw
                sampler = RowSampler([settings.seed + ids[i] for i in idx], settings.temperature, settings.top_p)
                decoding = dict(GenerationSettings().sampling_kwargs(), logits_processor=LogitsProcessorList([sampler]))
            else:
                decoding = settings.sampling_kwargs()
            with torch.no_grad():
                out = self.model.generate(
                    **batch, max_new_tokens=settings.max_new_tokens, use_cache=True,
                    eos_token_id=self.eos_ids, pad_token_id=self.pad_id, **decoding,
                )
            new = out[:, batch["input_ids"].shape[1]:].tolist()
            yield idx, [self._answer(tokens, settings.max_new_tokens) for tokens in new]

    def _left_padded(self, rows: list[list[int]]) -> dict:
        """Left padding (a tokenizer without a pad token works too): each prompt's answer follows it directly."""
        import torch  # deferred, as in `load`

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[k, width - len(r):] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _answer(self, tokens: list[int], budget: int) -> Answer:
        eos = set(self.eos_ids)
        end = next((k for k, t in enumerate(tokens) if t in eos), None)
        if end is None:
            kept, n, reason = tokens[:budget], min(len(tokens), budget), LENGTH
        else:
            kept, n, reason = tokens[:end], end + 1, EOS
        return Answer(self.tokenizer.decode(kept, skip_special_tokens=True).strip(), n, reason)


# ---- served model ----


class ServedModel:
    """A model behind an OpenAI-compatible server, asked through the generator's `CompletionClient`.

    With the completions API the prompt is the run's format as text (the Alpaca template by default), as for
    a local model; with the chat API (`api_style="chat"`, for chat models, and what `--prompt_template chat`
    asks a server for: it applies the model's chat template itself) the user message is the instruction,
    followed by the input after a blank line when there is one, after the chat format's system prompt if any.
    """

    def __init__(self, client, max_concurrency: int = 8, prompt_format: Optional[PromptFormat] = None):
        self.client = client
        self.max_concurrency = max_concurrency
        self.prompt_format = prompt_format

    def fingerprint(self) -> dict[str, Any]:
        # The model, not the server's address: a local server may come back on another port.
        return {"model": self.client.model, "api_style": self.client.api_style}

    def text_of(self, record: dict) -> str:
        """The text the model is asked with: the prompt, or with the chat API the user's message."""
        if self.client.api_style == "chat":
            return request_text(record)
        return prompt_of(record, self.prompt_format)

    def request_of(self, record: dict):
        """What a request sends: `text_of`, or the messages when the chat format has a system prompt."""
        fmt = self.prompt_format
        if self.client.api_style == "chat" and fmt is not None and fmt.is_chat and fmt.system_prompt:
            return fmt.messages({k: v for k, v in record.items() if k != "output"})
        return self.text_of(record)

    def answer(self, records: Sequence[dict], settings: GenerationSettings,
               ids: Optional[Sequence[int]] = None) -> Iterator[tuple[list[int], list[Answer]]]:
        """Asks for every record's answer concurrently; yields ([position], [answer]) as each arrives.

        A sampled request carries the seed `settings.seed` + the record's index in `ids` (default: its
        position). A request that fails for good is raised once every other request has ended, so the
        answers already paid for are yielded (and journaled) first.
        """
        ids = list(range(len(records))) if ids is None else list(ids)
        errors = []
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = {pool.submit(self.client.complete, [self.request_of(r)],
                                   settings.seed + ids[i] if settings.do_sample else None): i
                       for i, r in enumerate(records)}
            try:
                for fut in as_completed(futures):
                    try:
                        reply = fut.result()
                    except GenerationError as e:
                        errors.append(e)
                        continue
                    choice = reply.choices[0]
                    if choice.size is not None:
                        errors.append(GenerationError(
                            f"{self.client.base_url} sent a reply of {choice.size} bytes, more than the "
                            f"{self.client.max_reply_bytes} read; check the server"))
                        continue
                    n = int(reply.usage.get("completion_tokens", 0))
                    reason = LENGTH if choice.finish_reason == "length" else EOS
                    yield [futures[fut]], [Answer(choice.text.strip(), n, reason, reply.server or None)]
            finally:
                for fut in futures:
                    fut.cancel()
        if errors:
            raise errors[0]


# ---- the run ----


def write_outputs(
    records: Sequence[dict],
    answer_batches: Callable[[list[int]], Iterator[tuple[list[int], list[Answer]]]],
    output_path: str,
    generator: str,
    run: dict,
    progress: Optional[bool] = None,
    tags: Optional[dict] = None,
) -> list[dict]:
    """Answers the records not yet journaled, then writes the output file (atomically, in input order).

    Args:
        records: the evaluation set.
        answer_batches: given the indices still to answer, yields (indices, answers) as they are made.
        output_path: the AlpacaEval-format JSON to write.
        generator: the `generator` of every record.
        run: what identifies the run (model, input file, settings); checked against the journal.
        progress: show the progress bar (None: only on a terminal).
        tags: keys every record carries after `stop_reason` (`prompt_template`, when the format is not alpaca).
    Returns:
        The records written.
    """
    jpath = journal_path(output_path)
    afresh = "pass another --output_path (or delete the journal) to start afresh."
    check_journal_format(jpath, run, afresh)  # one clear line naming both formats, before any other setting
    earlier = records_of_run(jpath, run, "holds outputs of another run", f"Run with the same settings to continue "
                             f"it, or {afresh}")
    done = {int(rec["i"]): rec for rec in earlier if rec["t"] == "output"}
    todo = [i for i in range(len(records)) if i not in done]
    if done:
        print(f"{jpath}: {len(done)} of {len(records)} answers already made; continuing with the other {len(todo)}",
              file=sys.stderr, flush=True)
    bar = progress_bar(total=len(records), desc="outputs", initial=len(done), unit="answer", dynamic_ncols=True,
               disable=(not progress) if progress is not None else None)
    t0, tokens = time.monotonic(), 0
    with Journal(jpath) as journal:
        journal.append({"t": "start", "time": time.time(), "run": run}, sync=True)
        for idx, answers in answer_batches(todo) if todo else ():
            for k, (i, a) in enumerate(zip(idx, answers)):
                rec = {"t": "output", "i": i, **{k: v for k, v in dataclasses.asdict(a).items() if v is not None}}
                journal.append(rec, sync=k == len(idx) - 1)  # on disk once per batch
                done[i] = rec
                tokens += a.n_tokens
            bar.update(len(idx))
            bar.set_postfix(tokens_per_s=f"{tokens / max(1e-9, time.monotonic() - t0):.1f}", refresh=False)
    bar.close()
    out = []
    for i, r in enumerate(records):
        row = {"instruction": request_text(r), "output": done[i]["output"], "generator": generator}
        if "dataset" in r:
            row["dataset"] = r["dataset"]
        row.update(n_tokens=done[i]["n_tokens"], stop_reason=done[i]["stop_reason"], **(tags or {}))
        out.append(row)
    kept = f"every answer is in {jpath}, so the same command writes the file once there is room"
    with disk_full_as_error(output_path, kept), atomic_write(output_path) as f:
        json.dump(out, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return out


def file_digest(path: str) -> str:
    return sha256_of(Path(path).read_bytes())


@dataclass
class OutputsResult:
    """What `run_outputs` wrote: the records, under which generator name, and where."""

    records: list[dict]
    generator: str
    output_path: str


def run_outputs(cfg: OutputsConfig) -> OutputsResult:
    """`eval_model.py outputs`: checks the settings, then answers every instruction (resuming a killed run).

    Raises:
        UsageError: a setting, path or input file that cannot work (a chat format for a model without a chat
            template included); nothing is created then.
    """
    settings = cfg.generation_settings()
    settings.check()
    # The model folder's own format unless --prompt_template is given; a served model (no folder): alpaca.
    fmt, chosen = choose_format(cfg.prompt_template, cfg.system_prompt, cfg.model_dir if cfg.base_url is None else None)
    if (cfg.model_dir is None) == (cfg.base_url is None):
        raise UsageError("give either --model_dir (a local model) or --base_url with --model_name (a served one).")
    if cfg.base_url is not None and not cfg.model_name:
        raise UsageError("--base_url needs --model_name: the name the server knows the model by.")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise UsageError(f"--batch_size must be a positive integer; got {cfg.batch_size!r}")
    if cfg.model_dir is not None:
        check_model_source(cfg.model_dir, cfg.gguf_file, flag="--model_dir", hub=False)
        check_local_weights(cfg.model_dir, "--model_dir", cfg.gguf_file)  # before any file is written
    check_output_file(cfg.output_path, "--output_path", {"--instructions_path": cfg.instructions_path})
    records = load_instructions(cfg.instructions_path)
    run = {"instructions_sha256": file_digest(cfg.instructions_path), **vars(settings), **journal_settings(fmt)}
    if cfg.model_dir is not None:
        tokenizer = chat_tokenizer(cfg.model_dir, cfg.gguf_file, fmt)  # chat: one without a template stops here
        for line in (chosen, format_mismatch_warning(cfg.model_dir, fmt)):  # which format, and why, first
            if line:
                print(line, file=sys.stderr, flush=True)
        prompts = [prompt_of(r, fmt, tokenizer) for r in records]
        text_of = functools.partial(prompt_of, prompt_format=fmt, tokenizer=tokenizer)  # for the echo check
        dtype = resolve_dtype(cfg.dtype)  # what "auto" means here is part of the run: a resume may not mix two
        run["dtype"] = dtype

        def answer_batches(todo):  # the model loads only when there is something left to answer
            model = LocalModel.load(cfg.model_dir, cfg.gguf_file, dtype, prompt_format=fmt)
            for idx, answers in model.answer([prompts[i] for i in todo], settings, cfg.batch_size, ids=todo):
                yield [todo[i] for i in idx], answers

        identity = LocalModel.fingerprint(cfg.model_dir, cfg.gguf_file)
        generator = cfg.generator or Path(cfg.model_dir).resolve().name
    else:
        client = CompletionClient(cfg.model_name, base_url=cfg.base_url, api_key=cfg.api_key,
                                  api_style=served_api_style(cfg.api_style, fmt),
                                  max_tokens=cfg.max_new_tokens, temperature=cfg.temperature if cfg.do_sample else 0.0,
                                  top_p=cfg.top_p if cfg.do_sample else 1.0, logit_bias=None, stop=[],
                                  request_timeout=cfg.request_timeout, max_retries=cfg.max_retries)
        model = ServedModel(client, cfg.max_concurrency, fmt)
        identity, text_of = model.fingerprint(), model.text_of

        def answer_batches(todo):
            for idx, answers in model.answer([records[i] for i in todo], settings, ids=todo):
                yield [todo[i] for i in idx], answers

        generator = cfg.generator or cfg.model_name
    run.update(identity, generator=generator)
    target = Path(cfg.output_path)
    with output_lock(target.parent, f"eval_model.py outputs --output_path {cfg.output_path}",
                     name=f".{target.name}.lock"):
        written = write_outputs(records, answer_batches, cfg.output_path, generator, run,
                                tags={"prompt_template": fmt.name} if journal_settings(fmt) else None)
    trained_in = "the Alpaca template" if fmt.kind == "alpaca" else fmt.describe()
    warning = echo_warning(written, records, text_of, cfg.output_path, cfg.base_url is not None, trained_in)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return OutputsResult(written, generator, cfg.output_path)
