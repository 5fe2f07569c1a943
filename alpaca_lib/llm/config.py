"""How to reach an LLM: one typed config, the only place where a client default lives.

    python -m generate_instruction generate_instruction_following_data --help   # lists these fields

`ClientConfig` is how to reach an OpenAI-compatible server and what every request carries; any command
that calls one reuses it, with `CompletionClient.from_config`, and its command line is built from it
(`alpaca_lib.core.commands`), so a flag, its default and its help are written once.

`base_url` may name several servers of the same model (replicas, e.g. vLLM servers on several machines), separated
by commas: `--base_url http://10.0.0.1:8000/v1,http://10.0.0.2:8000/v1`, or a YAML list in a --config file.
`split_base_urls` reads that value; the client spreads requests over the replicas (alpaca_lib/llm/replicas.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from alpaca_lib.core.commands import flag, is_int
from alpaca_lib.core.errors import UsageError

# text-davinci-003, the original default, is retired; this is OpenAI's remaining completions model.
DEFAULT_MODEL = "gpt-3.5-turbo-instruct"
API_STYLES = ("auto", "completions", "chat")


# Where a --base_url value's next server starts: a comma before http:// or https:// (a comma inside one address,
# e.g. in its query, starts nothing).
_NEXT_URL = re.compile(r"\s*,[\s,]*(?=https?://)", re.IGNORECASE)


def split_base_urls(value: Any) -> list[str]:
    """The server addresses in a --base_url value: one address, several separated by commas, or a list (from a
    --config file); [] for None."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(url) for url in value]
    return _NEXT_URL.split(str(value))


def redact_url(url: str | None) -> str | None:
    """`url` without the `user:password@` part, and with each query value (`?token=...`, `?key=...`) shown as
    `***`: what may be written to a journal, a log or a report. Several addresses (`split_base_urls`) come back
    each redacted, joined by commas."""
    if not url:
        return url
    if len(urls := split_base_urls(url)) > 1:
        return ",".join(map(redact_url, urls))
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
        "An OpenAI-compatible server, e.g. http://localhost:8000/v1; default OPENAI_BASE_URL, else OpenAI. Several "
        "servers of the same model, separated by commas, share the requests (--max_concurrency counts them all); one "
        "that fails is left alone for a while and its requests go to the others.", None
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
        if isinstance(self.base_url, (list, tuple)):  # a YAML list in a --config file: one value, as typed
            self.base_url = ",".join(split_base_urls(self.base_url))
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
        for url in split_base_urls(self.base_url):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UsageError(
                    f"--base_url {redact_url(url)} is not an http(s) address with a host; pass the server's API root, "
                    "e.g. http://127.0.0.1:8000/v1"
                )


def client_settings(config: ClientConfig) -> dict[str, Any]:
    """The `ClientConfig` fields of `config` (which may be a subclass) as keyword arguments."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(ClientConfig)}
