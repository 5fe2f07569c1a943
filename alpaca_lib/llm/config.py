"""How to reach an LLM: one typed config, the only place where a client default lives, and the helpers
that build a command line from such configs.

    python -m generate_instruction generate_instruction_following_data --help   # lists these fields

`ClientConfig` is how to reach an OpenAI-compatible server and what every request carries; any command
that calls one reuses it, with `CompletionClient.from_config`. `cli_signature` and `cli_docstring` turn a
config dataclass into a `fire` command, so a flag, its default and its help are written once.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from alpaca_lib.core.errors import UsageError

# text-davinci-003, the original default, is retired; this is OpenAI's remaining completions model.
DEFAULT_MODEL = "gpt-3.5-turbo-instruct"
API_STYLES = ("auto", "completions", "chat")


def _help(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    return field(default=default, metadata={"help": text}, **kw)


def same_as(config_cls: type, name: str, text: str | None = None) -> Any:
    """A field with the default (and, unless `text` is given, the help) of `config_cls`'s field `name`.

    How a command reuses a setting defined elsewhere without typing its default again.
    """
    (f,) = [f for f in dataclasses.fields(config_cls) if f.name == name]
    return _help(f.metadata["help"] if text is None else text, f.default)


def redact_url(url: str | None) -> str | None:
    """`url` without the `user:password@` part, and with each query value (`?token=...`, `?key=...`) shown as
    `***`: what may be written to a journal, a log or a report."""
    if not url:
        return url
    parts = urlsplit(url)
    query = "&".join(f"{name}=***" if sep else name
                     for name, sep, _ in (pair.partition("=") for pair in parts.query.split("&") if pair))
    return parts._replace(netloc=parts.netloc.rpartition("@")[2], query=query).geturl()


@dataclass
class ClientConfig:
    """How to reach the model and what each request sends."""

    model_name: str = _help("The model the server knows.", DEFAULT_MODEL)
    api_style: str = _help(
        "auto (completions for *-instruct, davinci-002, babbage-002 and text-*; chat otherwise), completions or chat.",
        "auto",
    )
    base_url: str | None = _help(
        "An OpenAI-compatible server, e.g. http://localhost:8000/v1; default OPENAI_BASE_URL, else OpenAI.", None
    )
    api_key: str | None = _help("Default OPENAI_API_KEY (a local server needs none). Never written to disk.", None)
    organization: str | None = _help("Default OPENAI_ORG, then OPENAI_ORG_ID.", None)
    max_tokens: int = _help("Starting max_tokens of a reply (the original's); shrunk by 0.8 on a context-length error.",
                            3072)
    temperature: float = _help("Sampling temperature.", 1.0)
    top_p: float = _help("Nucleus sampling top_p.", 1.0)
    logit_bias: Any = _help(
        "auto (ban <|endoftext|> on OpenAI completion models only, as the original did), none, or a JSON object "
        "like '{\"50256\": -100}'.", "auto",
    )
    send_seed: bool = _help("Send a per-request seed, so servers that honour it answer reproducibly.", True)
    request_timeout: float = _help("Seconds before a request counts as timed out (it is then retried).", 300.0)
    max_retries: int = _help("Retries of one request after 429/5xx/timeouts/connection errors/unusable replies.", 6)
    backoff_s: float = _help("First wait before a retry, doubled each time (or the server's Retry-After).", 1.0)

    def __post_init__(self):
        if isinstance(self.logit_bias, str) and self.logit_bias.lower() in ("none", "null", ""):
            self.logit_bias = None
        elif isinstance(self.logit_bias, str) and self.logit_bias != "auto":
            try:
                self.logit_bias = json.loads(self.logit_bias)
            except json.JSONDecodeError:
                raise UsageError(
                    f"--logit_bias must be auto, none, or a JSON object like '{{\"50256\": -100}}'; got {self.logit_bias!r}"
                ) from None

    def check(self) -> None:
        """Raises UsageError naming the first setting out of range."""
        if self.api_style not in API_STYLES:
            raise UsageError(f"--api_style must be auto, completions or chat; got {self.api_style!r}")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise UsageError(f"--max_tokens must be a positive integer; got {self.max_tokens!r}")
        if not _is_int(self.max_retries) or self.max_retries < 0:
            raise UsageError(f"--max_retries must be an integer >= 0; got {self.max_retries!r}")
        if not isinstance(self.request_timeout, (int, float)) or not self.request_timeout > 0:
            raise UsageError(f"--request_timeout must be a number of seconds > 0; got {self.request_timeout!r}")
        if self.base_url is not None:
            parts = urlsplit(str(self.base_url))
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UsageError(
                    f"--base_url {redact_url(str(self.base_url))} is not an http(s) address with a host; pass the server's API root, "
                    "e.g. http://127.0.0.1:8000/v1"
                )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def client_settings(config: ClientConfig) -> dict[str, Any]:
    """The `ClientConfig` fields of `config` (which may be a subclass) as keyword arguments."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(ClientConfig)}


def cli_signature(config_cls: type, positional: bool = False) -> inspect.Signature:
    """A signature with the config's fields and defaults, for `fire` to build flags from.

    Args:
        config_cls: a dataclass whose fields are the flags.
        positional: the fields may also be given by position, in field order (keyword-only otherwise).
    """
    hints = typing.get_type_hints(config_cls)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if positional else inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter(f.name, kind, annotation=hints[f.name],
                          default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(config_cls)
    ]
    return inspect.Signature(params, return_annotation=None)


def cli_docstring(config_cls: type, summary: str) -> str:
    """`summary` and an Args section made of the fields' help texts, for `fire --help`."""
    lines = [summary, "", "Args:"]
    lines += [f"    {f.name}: {f.metadata['help']}" for f in dataclasses.fields(config_cls)]
    return "\n".join(lines)


def cli_command(config_cls: type, run: Callable[[Any], Any], name: str, summary: str, positional: bool = False) -> Callable:
    """A `fire` command whose flags are `config_cls`'s fields: it builds the config and calls `run(config)`.

    Args:
        config_cls: the command's settings, a dataclass (the only place its defaults live).
        run: what the command does, given the config.
        name: the command's name (what `fire` lists).
        summary: the first line of its help.
        positional: the flags may also be given by position, in field order.
    """
    signature = cli_signature(config_cls, positional)

    def command(*args: Any, **kwargs: Any) -> Any:
        return run(config_cls(**signature.bind(*args, **kwargs).arguments))

    command.__name__ = command.__qualname__ = name
    command.__signature__ = signature
    command.__doc__ = cli_docstring(config_cls, summary)
    return command
