"""Prompt formats: how a record becomes the text a model reads, chosen per run by `--prompt_template`.

    from alpaca_lib.data.formats import load_prompt_format
    fmt = load_prompt_format("chat", system_prompt="Be brief.")   # or "alpaca" (the default), or a JSON file
    fmt.check_tokenizer(tokenizer, "runs/base")                   # chat: the tokenizer must have a chat template
    text = fmt.prompt({"instruction": "Say hi.", "input": ""}, tokenizer)

Three kinds:
- `alpaca`: Stanford Alpaca's two templates (`alpaca_lib.core.prompt.PROMPT_DICT`), byte for byte.
- `chat`: the tokenizer's own chat template (`tokenizer.chat_template`). An Alpaca record is one user turn (its
  instruction, then its input after a blank line: `request_text`, as AlpacaEval writes it) and one assistant
  turn, after an optional system turn; conversation records (`alpaca_lib.data.conversations`) keep their turns.
- a file: a JSON object with `prompt_input`, `prompt_no_input` and `response_split` (and an optional
  `description`), used like the Alpaca templates; checked when read.

`PromptFormat.settings()` is what a run records of its format (the training run's settings, the evaluation
journal), so a resume or a rerun with another format is refused. A trained model's folder holds the format it
was trained in, `prompt_format.json` (`save_format` / `saved_format`), so it can be prompted the same way.
Nothing heavy is imported here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import atomic_write
from alpaca_lib.core.prompt import PROMPT_DICT, format_prompt, request_text
from alpaca_lib.data.records import DataError

ALPACA, CHAT = "alpaca", "chat"
FILE_KEYS = ("prompt_input", "prompt_no_input", "response_split")
_FILE_OPTIONAL = ("description",)
_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")
FORMAT_FILE = "prompt_format.json"  # in a trained model's folder: the format it was trained in


class PromptFormatError(UsageError):
    """A `--prompt_template` that cannot be used (an unknown name, a bad template file, a model without a chat
    template); the message says which and how to fix it."""


@dataclass(frozen=True)
class PromptFormat:
    """One run's prompt format. Build it with `load_prompt_format`.

    Attributes:
        name: "alpaca", "chat", or the template file's path as given.
        templates: the file's (or Alpaca's) `prompt_input`, `prompt_no_input`, `response_split`; None for chat.
        system_prompt: the system turn of every chat conversation that has none of its own ("" or None: none,
            so the chat template's own default applies, if it has one).
        digest: the SHA-256 of the template file's bytes ("" for alpaca and chat).
    """

    name: str
    templates: Optional[Dict[str, str]] = field(default=None, compare=False)
    system_prompt: Optional[str] = None
    digest: str = ""

    @property
    def kind(self) -> str:
        """"alpaca", "chat" or "file"."""
        return self.name if self.name in (ALPACA, CHAT) else "file"

    @property
    def is_chat(self) -> bool:
        return self.name == CHAT

    def describe(self) -> str:
        """The format in a few words, for logs: `alpaca`, `chat (the model's own chat template)`,
        `template file PATH`."""
        if self.kind == "file":
            return f"template file {self.name}"
        if self.is_chat:
            return "chat (the model's own chat template" + (", with a system prompt)" if self.system_prompt else ")")
        return "alpaca"

    def settings(self) -> Dict[str, Any]:
        """What a run records of its format; equal settings mean the same prompts for the same tokenizer."""
        out: Dict[str, Any] = {"prompt_template": self.name}
        if self.is_chat and self.system_prompt:
            out["system_prompt"] = self.system_prompt
        if self.digest:
            out["prompt_template_sha256"] = self.digest
        return out

    # -- turning records into text ---------------------------------------------------------------------

    def check_tokenizer(self, tokenizer, where: str) -> None:
        """Raises PromptFormatError when this format cannot be used with `tokenizer` (chat without a template).

        Args:
            where: the model the tokenizer belongs to, for the message (e.g. the --model_name_or_path).
        """
        if self.is_chat and not getattr(tokenizer, "chat_template", None):
            raise PromptFormatError(
                f"{where}: the tokenizer has no chat template, so --prompt_template chat cannot be used with it. "
                "Use --prompt_template alpaca (the default), or a template file (--prompt_template my_template.json "
                "with prompt_input, prompt_no_input and response_split)."
            )
        if self.is_chat:  # a template that refuses this run's turns says so now, not in the middle of the data
            probe = self.messages({"instruction": "q", "output": "a"})
            try:
                render_chat(tokenizer, probe)
            except ChatTemplateError as e:
                fix = " Drop --system_prompt: this template takes no system turn." if self.system_prompt else ""
                raise PromptFormatError(f"{where}: {e}.{fix}") from None

    def unended_answers(self, tokenizer, where: str) -> Optional[str]:
        """A warning when training in this format cannot teach the model to end its answers (a chat template that
        writes nothing after an assistant turn: no end-of-turn token, no EOS), else None.

        Args:
            where: the model the tokenizer belongs to, for the message.
        """
        if not self.is_chat or end_of_turn_text(tokenizer):
            return None
        return (f"{where}: the chat template writes nothing after an assistant turn (no end-of-turn token, no EOS), so "
                "training does not teach the model where an answer ends: it will run on to the answer budget. A "
                "template that closes each assistant turn (as ChatML's <|im_end|> does) avoids this.")

    def messages(self, record: Mapping[str, Any]) -> List[Dict[str, str]]:
        """A record as chat messages: a conversation's own (after this format's system prompt when it has no
        system turn), or an Alpaca record's one user and one assistant turn (no assistant turn when the record
        has no `output`: a prompt to answer)."""
        turns = list(record["messages"]) if "messages" in record else [{"role": "user", "content": request_text(record)}]
        if "messages" not in record and "output" in record:
            turns.append({"role": "assistant", "content": record["output"]})
        if self.system_prompt and not (turns and turns[0]["role"] == "system"):
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns

    def prompt(self, record: Mapping[str, Any], tokenizer=None) -> str:
        """The text the model reads before it answers `record` (its `output`, if any, is left out).

        Args:
            record: an Alpaca record (`instruction`, optional `input`).
            tokenizer: the model's tokenizer; needed for chat.
        """
        if self.is_chat:
            if tokenizer is None:
                raise ValueError("a chat prompt needs the model's tokenizer")
            turns = self.messages({k: v for k, v in record.items() if k != "output"})
            return render_chat(tokenizer, turns, add_generation_prompt=True)
        if self.templates is None:  # alpaca: the original function, byte for byte
            return format_prompt(record)
        key = "prompt_input" if record.get("input", "") != "" else "prompt_no_input"
        return self.templates[key].format_map({"instruction": record["instruction"], "input": record.get("input", "")})

    def prompt_adds_special_tokens(self) -> bool:
        """Whether a prompt is tokenized with the tokenizer's special tokens (BOS) added: not for chat, whose
        template writes its own."""
        return not self.is_chat


def has_generation_marks(tokenizer) -> bool:
    """Whether the tokenizer's chat template marks assistant text with `{% generation %}` blocks."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and bool(_GENERATION_BLOCK.search(template))


class ChatTemplateError(DataError):
    """The tokenizer's chat template raised on a conversation (e.g. a template that takes no system turn)."""


def render_chat(tokenizer, messages: Sequence[dict], **kwargs: Any) -> str:
    """`tokenizer.apply_chat_template(messages, tokenize=False, ...)`, with the template's own refusal (a Jinja
    `raise_exception`, or any error it hits) as a ChatTemplateError that says what the template said."""
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - a template may raise anything: it is the user's model's code
        roles = ", ".join(m["role"] for m in messages)
        raise ChatTemplateError(f"the model's chat template refused a conversation of roles [{roles}]: "
                                f"{type(e).__name__}: {e}") from None


def end_of_turn_text(tokenizer) -> str:
    """The text a chat template closes an assistant turn with (ChatML `<|im_end|>`, Llama 3 `<|eot_id|>`), less
    the whitespace after it; "" when it writes nothing there."""
    probe = "\u2063x\u2063"  # content that no template writes on its own
    text = render_chat(tokenizer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}])
    return text[text.rfind(probe) + len(probe):].strip() if probe in text else ""


def end_of_turn_token(tokenizer) -> Optional[int]:
    """The token id a chat template closes an assistant turn with, or None when that is not one token. A model
    answering in its chat format stops there."""
    after = end_of_turn_text(tokenizer)
    if not after:
        return None
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def load_prompt_format(value: Optional[str] = ALPACA, system_prompt: Optional[str] = None,
                       flag: str = "--prompt_template") -> PromptFormat:
    """The format `--prompt_template` names: "alpaca", "chat", or a JSON template file.

    Args:
        value: the flag's value (None or "" mean alpaca).
        system_prompt: a system turn for chat conversations (refused with any other format).
        flag: the flag's name, for the messages.
    Raises:
        PromptFormatError: an unknown name, a file that cannot be read or is not a valid template, or a system
            prompt with a format that has no system turn.
    """
    value = value or ALPACA
    if system_prompt and value != CHAT:
        raise PromptFormatError(
            f"--system_prompt is given but {flag} is {value!r}: only the chat format has a system turn. "
            f"Add {flag} chat, or drop --system_prompt.")
    if value == ALPACA:
        return PromptFormat(ALPACA)
    if value == CHAT:
        return PromptFormat(CHAT, system_prompt=system_prompt or None)
    if not os.path.isfile(value):
        raise PromptFormatError(
            f"{flag} {value!r}: not 'alpaca', not 'chat', and no such file. Give one of those, or the path of a JSON "
            "template file with prompt_input, prompt_no_input and response_split.")
    try:
        with open(value, "rb") as f:
            raw = f.read()
        templates = json.loads(raw.decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PromptFormatError(f"{flag} {value}: cannot be read as a JSON template ({e}).") from None
    return PromptFormat(value, _check_templates(templates, f"{flag} {value}"), digest=hashlib.sha256(raw).hexdigest())


def _check_templates(templates: Any, where: str) -> Dict[str, str]:
    """The template file's three templates, checked: strings, only {instruction} and {input} as fields."""
    expected = "an object with prompt_input, prompt_no_input and response_split (strings; description optional)"
    if not isinstance(templates, dict):
        raise PromptFormatError(f"{where}: holds a {type(templates).__name__}, expected {expected}.")
    unknown = sorted(set(templates) - set(FILE_KEYS) - set(_FILE_OPTIONAL))
    missing = [k for k in FILE_KEYS if k not in templates]
    if unknown or missing:
        found = [f"unknown key(s) {unknown}"] * bool(unknown) + [f"no {', '.join(missing)}"] * bool(missing)
        raise PromptFormatError(f"{where}: {' and '.join(found)}; expected {expected}.")
    for key in FILE_KEYS:
        if not isinstance(templates[key], str) or not templates[key]:
            raise PromptFormatError(f"{where}: {key} is {templates[key]!r}, expected a non-empty string.")
    for key, needed in (("prompt_input", {"instruction", "input"}), ("prompt_no_input", {"instruction"})):
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(templates[key]) if name is not None}
        except ValueError as e:
            raise PromptFormatError(f"{where}: {key} is not a valid template ({e}); write {{{{ and }}}} for "
                                    "literal braces.") from None
        allowed = needed if key == "prompt_input" else {"instruction"}
        if names - allowed or needed - names:
            raise PromptFormatError(
                f"{where}: {key} has the fields {sorted(names)}; it must use exactly {sorted(needed)} (as "
                "{instruction} and {input}); write {{ and }} for literal braces.")
        if templates["response_split"] not in templates[key]:
            raise PromptFormatError(f"{where}: {key} does not contain response_split {templates['response_split']!r}; "
                                    "the prompt should end with it (e.g. \"### Response:\").")
    return {k: templates[k] for k in FILE_KEYS}


ALPACA_TEMPLATES = {**PROMPT_DICT, "response_split": "### Response:"}  # Alpaca's own, as a template file holds it


def save_format(prompt_format: PromptFormat, folder: str | os.PathLike) -> str:
    """Writes `folder/prompt_format.json`: the format's `settings()`, its `kind`, and a template file's templates
    (so the folder can be prompted as it was trained even where the file is gone). Returns the file's path."""
    record: Dict[str, Any] = {**prompt_format.settings(), "kind": prompt_format.kind}
    if prompt_format.kind == "file":
        record["templates"] = dict(prompt_format.templates)
    path = os.path.join(folder, FORMAT_FILE)
    with atomic_write(path) as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return path


def saved_format(folder: str | os.PathLike) -> Optional[PromptFormat]:
    """The format a model in `folder` was trained in (its `prompt_format.json`), or None when it has none (a
    base model, or one trained before formats were recorded: alpaca).

    Raises:
        PromptFormatError: the file is there but cannot be read, or does not describe a format.
    """
    path = os.path.join(folder, FORMAT_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        name, kind = record["prompt_template"], record["kind"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PromptFormatError(f"{path}: not a prompt format record ({e}); it is written by train.py, so train "
                                "again, or delete it to prompt the model in the alpaca format.") from None
    if kind == "file":
        return PromptFormat(name, _check_templates(record.get("templates"), path),
                            digest=record.get("prompt_template_sha256", ""))
    if kind not in (ALPACA, CHAT) or name != kind:
        raise PromptFormatError(f"{path}: prompt_template {name!r} of kind {kind!r}; expected alpaca, chat or a file.")
    return PromptFormat(name, system_prompt=record.get("system_prompt") or None)
