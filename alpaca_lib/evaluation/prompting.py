"""How `eval_model.py outputs` and `chat` put a record to a model: the run's `--prompt_template`
(alpaca_lib/data/formats.py), and what a run records of it.

    from alpaca_lib.evaluation.prompting import choose_format, prompt_of
    fmt, said = choose_format(None, None, "runs/chat-lora")    # as its prompt_format.json says, else alpaca
    prompt_of({"instruction": "Say hi."})                                  # the Alpaca prompt, as training wrote it
    prompt_of({"instruction": "Say hi."}, load_prompt_format("chat"), tok)  # the chat template, ready for the answer

Without `--prompt_template` a local model is prompted in the format its folder records (`prompt_format.json`,
written by train.py's final save), else in alpaca (`choose_format`); a served model has no folder: alpaca.

An outputs journal records the format only when it is not alpaca (`journal_settings`), so the journal of a run
made before formats existed still resumes; a journal of another format is refused naming both
(`check_journal_format`). Answers that repeat their prompt are counted here too (`echo_warning`). Nothing heavy
is imported here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from alpaca_lib.core.journal import iter_records
from alpaca_lib.core.prompt import format_prompt
from alpaca_lib.data.formats import (
    ALPACA,
    FORMAT_FILE,
    PromptFormat,
    PromptFormatError,
    load_prompt_format,
    saved_format,
)
from alpaca_lib.evaluation.settings import journal_path

FORMAT_KEYS = ("prompt_template", "system_prompt", "prompt_template_sha256")  # `PromptFormat.settings()`'s keys


def prompt_of(record: Mapping[str, Any], prompt_format: Optional[PromptFormat] = None, tokenizer=None) -> str:
    """The text a model reads before its answer to `record`: the Alpaca prompt (the default: the one training
    used), or `prompt_format`'s (chat needs the model's `tokenizer`; it ends with the assistant's turn opened)."""
    if prompt_format is None:
        return format_prompt(record)
    return prompt_format.prompt(record, tokenizer)


def choose_format(prompt_template: Optional[str], system_prompt: Optional[str],
                  model_dir: Optional[str]) -> tuple[PromptFormat, Optional[str]]:
    """The run's prompt format: `--prompt_template` when given; else the one the model folder records
    (`prompt_format.json`, its system prompt included; `--system_prompt` replaces that); else alpaca.

    Args:
        prompt_template: the flag (None or "": not given).
        system_prompt: the flag (None: not given).
        model_dir: the local model's folder; None for a served model (alpaca by default: it has no folder).
    Returns:
        The format, and the line that says where it came from when it was not given and is not alpaca (else None:
        an alpaca run says nothing new).
    Raises:
        PromptFormatError: a bad `--prompt_template` or `prompt_format.json`; a `--system_prompt` with a format
            that has no system turn.
    """
    recorded = None if prompt_template or not model_dir else saved_format(model_dir)
    if recorded is None or recorded.kind == ALPACA:
        return load_prompt_format(prompt_template or ALPACA, system_prompt), None
    path = os.path.join(model_dir, FORMAT_FILE)
    if system_prompt and not recorded.is_chat:
        raise PromptFormatError(
            f"--system_prompt is given but {path} records the template file {recorded.name}, which has no system "
            "turn: only the chat format has one. Drop --system_prompt, or add --prompt_template chat.")
    said = f"template file {recorded.name}" if recorded.kind == "file" else (
        "chat" + (f" with the system prompt {recorded.system_prompt!r}" if recorded.system_prompt else ""))
    note = f"prompt format: {said} (recorded in {path})"
    if system_prompt:
        note += f", with --system_prompt {system_prompt!r}" + (" instead" if recorded.system_prompt else "")
        recorded = dataclasses.replace(recorded, system_prompt=system_prompt)
    return recorded, note


def journal_settings(prompt_format: PromptFormat) -> dict:
    """What an outputs journal's "start" record holds of the format: nothing for alpaca (as before formats
    existed), else `prompt_format.settings()`."""
    return {} if prompt_format.kind == ALPACA else prompt_format.settings()


def format_flags(settings: Mapping[str, Any]) -> str:
    """The flags that chose a recorded format, for messages: `--prompt_template chat --system_prompt '...'`."""
    text = f"--prompt_template {settings.get('prompt_template') or ALPACA}"
    return text + (f" --system_prompt {settings['system_prompt']!r}" if settings.get("system_prompt") else "")


def check_journal_format(path: Path, run: Mapping[str, Any], fix: str) -> None:
    """Refuses a journal whose runs used another prompt format than `run`, naming both formats.

    Args:
        path: the journal (absent: nothing to check).
        run: the identity this run journals (`journal_settings` included).
        fix: how to start afresh instead, for the message.
    Raises:
        PromptFormatError: an earlier run wrote this journal in another format (or another version of the same
            template file).
    """
    if not path.exists():
        return
    now = {k: run.get(k) for k in FORMAT_KEYS}
    for _, rec in iter_records(path, repair=False):
        before = {k: (rec.get("run") or {}).get(k) for k in FORMAT_KEYS}
        if rec["t"] != "start" or before == now:
            continue
        if {**before, "prompt_template_sha256": None} == {**now, "prompt_template_sha256": None}:
            raise PromptFormatError(
                f"{path} holds outputs made with the template file {now['prompt_template']} as it was then; its bytes "
                f"have changed since (sha256 {str(before['prompt_template_sha256'])[:12]}... then, "
                f"{str(now['prompt_template_sha256'])[:12]}... now). Restore the file to continue that run, or {fix}")
        raise PromptFormatError(
            f"{path} holds outputs made with {format_flags(before)}; this run asks for {format_flags(now)}. Run with "
            f"{format_flags(before)} to continue it, or {fix}")


def chat_tokenizer(model_dir: str, gguf_file: Optional[str], prompt_format: PromptFormat):
    """A local model's tokenizer, checked, when its prompts are chat prompts (the tokenizer writes them); else None.

    Raises:
        PromptFormatError: chat asked of a model whose tokenizer has no chat template.
    """
    if not prompt_format.is_chat:
        return None
    from transformers import AutoTokenizer  # deferred: only chat prompts need it before the model loads

    tokenizer = AutoTokenizer.from_pretrained(model_dir, **({"gguf_file": gguf_file} if gguf_file else {}))
    prompt_format.check_tokenizer(tokenizer, f"--model_dir {model_dir}")
    return tokenizer


def served_api_style(api_style: Optional[str], prompt_format: PromptFormat) -> str:
    """A served model's API: `api_style` as given; by default chat under the chat format (the server applies the
    model's chat template to the messages), completions otherwise (the prompt as text).

    Raises:
        PromptFormatError: a format the API cannot carry (chat as a completions prompt, a template file through
            the chat API).
    """
    style = api_style or ("chat" if prompt_format.is_chat else "completions")
    if prompt_format.is_chat and style != "chat":
        raise PromptFormatError(
            f"--prompt_template chat with --api_style {style}: a served model's chat template is applied by its "
            "server, through the chat API. Drop --api_style (chat is then the default), or give --prompt_template "
            "alpaca to send the Alpaca prompt as text.")
    if prompt_format.kind == "file" and style == "chat":
        raise PromptFormatError(
            f"--prompt_template {prompt_format.name} with --api_style chat: the chat API sends the request alone, "
            "without the template file's text. Drop --api_style chat (completions sends the file's prompt as text).")
    return style


def echoed(answer: str, prompt: str, instruction: str) -> bool:
    """Whether an answer repeats the text it was asked with: the prompt whole (or followed by more), or cut
    short but past the request's instruction, as a server that echoes the prompt (or is cut off by the token
    budget while echoing) replies."""
    prompt = prompt.strip()
    if answer.startswith(prompt):
        return True
    start = prompt.find(instruction) if instruction else -1
    return start >= 0 and prompt.startswith(answer) and len(answer) >= start + len(instruction)


def echo_warning(written: Sequence[dict], records: Sequence[dict], text_of: Callable[[dict], str],
                 output_path: str, served: bool, trained_in: str = "the Alpaca template") -> Optional[str]:
    """One line when answers repeat their prompt (`text_of(record)`, as sent), else None.

    Args:
        trained_in: the run's prompt format, in words, for what a local model should have been trained on.
    """
    n = sum(echoed(w["output"], text_of(r), r["instruction"].strip()) for w, r in zip(written, records))
    if not n:
        return None
    why = ("the server echoes it (check its settings and --api_style)" if served
           else f"the model copies it (check that it was trained on {trained_in})")
    return (f"warning: {n} of {len(written)} answers in {output_path} repeat their prompt: {why}. They are written "
            f"as received; to ask again, delete {output_path} and {journal_path(output_path)}.")
