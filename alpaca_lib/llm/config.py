"""How to reach an LLM: one typed config, the only place where a client default lives.

    python -m generate_instruction generate_instruction_following_data --help   # lists these fields

`ClientConfig` is how to reach an OpenAI-compatible server and what every request carries; any command
that calls one reuses it, with `CompletionClient.from_config`, and its command line is built from it
(`alpaca_lib.core.commands`), so a flag, its default and its help are written once.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from alpaca_lib.core.commands import flag, is_int
from alpaca_lib.core.errors import UsageError

# text-davinci-003, the original default, is retired; this is OpenAI's remaining completions model.
DEFAULT_MODEL = "gpt-3.5-turbo-instruct"
API_STYLES = ("auto", "completions", "chat")


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

    model_name: str = flag("The model the server knows.", DEFAULT_MODEL)
    api_style: str = flag(
        "auto (completions for *-instruct, davinci-002, babbage-002 and text-*; chat otherwise), completions or chat.",
        "auto",
    )
    base_url: str | None = flag(
        "An OpenAI-compatible server, e.g. http://localhost:8000/v1; default OPENAI_BASE_URL, else OpenAI.", None
    )
    api_key: str | None = flag("Default OPENAI_API_KEY (a local server needs none). Never written to disk.", None)
    organization: str | None = flag("Default OPENAI_ORG, then OPENAI_ORG_ID.", None)
    max_tokens: int = flag("Starting max_tokens of a reply (the original's); shrunk by 0.8 on a context-length error.",
                           3072)
    temperature: float = flag("Sampling temperature.", 1.0)
    top_p: float = flag("Nucleus sampling top_p.", 1.0)
    logit_bias: Any = flag(
        "auto (ban <|endoftext|> on OpenAI completion models only, as the original did), none, or a JSON object "
        "like '{\"50256\": -100}'.", "auto",
    )
    send_seed: bool = flag("Send a per-request seed, so servers that honour it answer reproducibly.", True)
    request_timeout: float = flag("Seconds before a request counts as timed out (it is then retried).", 300.0)
    max_retries: int = flag("Retries of one request after 429/5xx/timeouts/connection errors/unusable replies.", 6)
    backoff_s: float = flag("First wait before a retry, doubled each time (or the server's Retry-After).", 1.0)

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
        if not is_int(self.max_tokens) or self.max_tokens < 1:
            raise UsageError(f"--max_tokens must be a positive integer; got {self.max_tokens!r}")
        if not is_int(self.max_retries) or self.max_retries < 0:
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


def client_settings(config: ClientConfig) -> dict[str, Any]:
    """The `ClientConfig` fields of `config` (which may be a subclass) as keyword arguments."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(ClientConfig)}
