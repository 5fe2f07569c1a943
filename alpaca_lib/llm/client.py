"""Requests to an OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama, `transformers serve`).

    >>> client = CompletionClient("gpt-3.5-turbo-instruct")   # key from OPENAI_API_KEY; settings: ClientConfig
    >>> reply = client.complete(["...4. Instruction:"], seed=1)
    >>> reply.choices[0].text, reply.choices[0].finish_reason, reply.usage

Both API styles go through the `openai` client (>= 1.x), imported when the first client is made,
never at import time. Keys and addresses are read when the client is made: `api_key` or
OPENAI_API_KEY, `base_url` or OPENAI_BASE_URL, `organization` or OPENAI_ORG (the original's name)
or OPENAI_ORG_ID (the client's name).

Failures are handled here, with limits: 429, 5xx, 408/409, timeouts, connection errors and replies
without usable choices are retried with exponential backoff (honouring Retry-After) up to
`max_retries` times; a context-length error shrinks `max_tokens` by 0.8 and tries again, as the
original did, and the smaller value is kept for later requests. Anything else (a wrong key, model
or address) stops with a message that says what to change.

A `base_url` that names several servers (`http://a:8000/v1,http://b:8000/v1`: replicas of one model)
spreads the requests over them (alpaca_lib/llm/replicas.py): each attempt goes to the replica with the
fewest requests in flight; one whose request fails in a way worth retrying is left alone for a while, and
the request goes at once to another replica that is up, without counting a retry. A request waits, and
counts one, only when no replica it has not tried since its last wait is up.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from alpaca_lib.core.errors import UsageError

from .config import (
    ClientConfig,
    client_settings,
    redact_url,  # noqa: F401 (public here too)
    split_base_urls,
)
from .replicas import Replica, Replicas, server_retry_after

# OpenAI's address; with any other base_url a missing key is not an error (local servers need none).
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
# GPT-2/GPT-3 (r50k/p50k) id of <|endoftext|>; the original banned it so replies run to the 20th item.
GPT2_ENDOFTEXT_BIAS = {"50256": -100}
# The same ban for the cl100k completion models (gpt-3.5-turbo-instruct, davinci-002, babbage-002).
CL100K_ENDOFTEXT_BIAS = {"100257": -100}
_CL100K_COMPLETION_MODELS = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")
_GPT3_PREFIXES = ("text-davinci-", "text-curie-", "text-babbage-", "text-ada-")
_GPT3_BASE_MODELS = ("davinci", "curie", "babbage", "ada")
_CONTEXT_ERROR = re.compile(
    r"context[ _-]?length|maximum context|context size|context window|reduce (?:the length|your prompt)"
    r"|max_tokens.{0,40}too large|too many tokens",
    re.IGNORECASE,
)
_RETRY_STATUS = {408, 409, 429}
# The most of one reply body read into memory (a 3072-token reply is some tens of KB of JSON).
MAX_REPLY_BYTES = 4 * 2**20


def _base_name(model: str) -> str:
    # "openai/gpt-3.5-turbo-instruct" and "gpt-3.5-turbo-instruct" name the same model.
    return model.rsplit("/", 1)[-1]


def infer_api_style(model: str) -> str:
    """Picks "completions" or "chat" from the model name.

    Names ending in "-instruct", davinci-002, babbage-002 and text-* models use completions; all
    others chat. The match is case-sensitive: OpenAI's names are lowercase, while chat-tuned open
    models such as "SmolLM2-135M-Instruct" end in "-Instruct" and belong on the chat API.
    """
    name = _base_name(model)
    if name.endswith("-instruct") or name in ("davinci-002", "babbage-002") or name.startswith("text-"):
        return "completions"
    return "chat"


def default_logit_bias(model: str, api_style: str) -> dict[str, int] | None:
    """The original's "no <|endoftext|>" bias, only where the token id means <|endoftext|>.

    Returns {"50256": -100} for the GPT-3 models the original ran on, {"100257": -100} for OpenAI's
    cl100k completion models, and None for chat models and anything else (a local model's
    vocabulary gives those ids other meanings).
    """
    if api_style != "completions":
        return None
    name = _base_name(model)
    if name.startswith(_GPT3_PREFIXES) or name in _GPT3_BASE_MODELS:
        return dict(GPT2_ENDOFTEXT_BIAS)
    if name in _CL100K_COMPLETION_MODELS:
        return dict(CL100K_ENDOFTEXT_BIAS)
    return None


def is_context_length_error(exc: BaseException) -> bool:
    """True for a 400 that says the prompt plus max_tokens exceed the model's context."""
    code = getattr(exc, "code", None)
    if code in ("context_length_exceeded", "exceed_context_size_error"):
        return True
    return bool(_CONTEXT_ERROR.search(str(getattr(exc, "message", "") or exc)))


class GenerationError(RuntimeError):
    """A request failed in a way retrying will not fix, or retries ran out."""


@dataclass
class Choice:
    """One reply: the text and why generation stopped ("stop", "length", ...)."""

    text: str
    finish_reason: str | None
    # {token: logprob} of the reply's first token, when asked for (`complete(..., logprobs=k)`) and sent.
    first_logprobs: dict[str, float] | None = None
    # Set when the reply's body was larger than the client's max_reply_bytes: its size in bytes (at least
    # that limit); `text` is then the body's first bytes, for a look, and not the reply.
    size: int | None = None


@dataclass
class Reply:
    """The outcome of one HTTP request (possibly after retries)."""

    choices: list[Choice]
    usage: dict[str, int] = field(default_factory=dict)
    attempts: int = 1
    latency_s: float = 0.0
    max_tokens: int = 0
    server: str = ""  # the replica that answered (`Replica.url`: no password, no query values)


class CompletionClient:
    """Sends prompts to one model with retries, backoff and context-length shrinking.

    Args:
        model: the model name the server knows.
        stop: stop sequences (none by default; the generator passes the original's).
        sleep: the wait function (tests pass a recorder).
        backoff_max_s: the cap of the doubling wait between retries.
        max_reply_bytes: a reply body larger than this is not read further: it comes back as choices with
            `size` set, and is not retried (memory stays bounded whatever the server sends).
        settings: any other `ClientConfig` field (api_style, base_url, api_key, organization, max_tokens,
            temperature, top_p, logit_bias, send_seed, request_timeout, max_retries, backoff_s); their
            defaults are the config's. base_url / api_key / organization left None read
            OPENAI_BASE_URL / OPENAI_API_KEY / OPENAI_ORG (then OPENAI_ORG_ID) now. A base_url (or
            OPENAI_BASE_URL) with several servers, comma-separated, makes one replica of each.
    Raises:
        UsageError: a setting out of range.
    """

    def __init__(
        self,
        model: str,
        *,
        stop: Sequence[str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        backoff_max_s: float = 60.0,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        **settings: Any,
    ):
        config = ClientConfig(model_name=model, **settings)
        config.check()
        self.model = model
        self.api_style = infer_api_style(model) if config.api_style == "auto" else config.api_style
        self.logit_bias = default_logit_bias(model, self.api_style) if config.logit_bias == "auto" else config.logit_bias
        self.max_tokens = int(config.max_tokens)
        self.temperature = config.temperature
        self.top_p = config.top_p
        self.stop = list(stop or ())
        self.send_seed = config.send_seed
        self.max_retries = int(config.max_retries)
        self.backoff_s = config.backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_reply_bytes = max_reply_bytes
        self._sleep = sleep
        self._lock = threading.Lock()
        urls = split_base_urls(config.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL)
        self._replicas = Replicas(
            [Replica(*self._make_openai_client(url, config.api_key, config.organization, config.request_timeout))
             for url in urls],
            backoff_s=self.backoff_s, backoff_max_s=backoff_max_s)

    @classmethod
    def from_config(cls, config: ClientConfig, **kw: Any) -> "CompletionClient":
        """A client with `config`'s settings (a `GenerateConfig` gives its client part)."""
        settings = client_settings(config)
        return cls(settings.pop("model_name"), **settings, **kw)

    @staticmethod
    def _make_openai_client(base_url, api_key, organization, timeout) -> tuple[str, Any]:
        """(the server's address for messages, an `openai.OpenAI` that sends to it)."""
        try:
            import openai
        except ImportError as e:  # pragma: no cover - openai is a dependency in pyproject.toml
            raise GenerationError("the `openai` package is needed to generate data: pip install 'openai>=1.40'") from e
        base_url, query = _split_query(base_url)
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if base_url.rstrip("/") == OPENAI_DEFAULT_BASE_URL:
                raise GenerationError(
                    "no OpenAI API key: set OPENAI_API_KEY (or pass --api_key), or point --base_url / "
                    "OPENAI_BASE_URL at a local OpenAI-compatible server"
                )
            api_key = "no-key"  # local servers ignore it, the client requires one
        organization = organization or os.environ.get("OPENAI_ORG") or os.environ.get("OPENAI_ORG_ID")
        # Retries are ours (counted, bounded, logged), so the client's own are off. The address's query
        # (`?token=...`) goes with every request as default_query: left in base_url, the endpoint's path
        # would be appended after it (`/v1/?token=...completions`).
        client = openai.OpenAI(api_key=api_key, organization=organization, base_url=base_url, timeout=timeout,
                               max_retries=0, default_query=dict(parse_qsl(query, keep_blank_values=True)) or None)
        return redact_url(str(client.base_url) + (f"?{query}" if query else "")), client

    @property
    def base_url(self) -> str:
        """The server's address, without a password or query values it may carry (for messages); with several
        replicas, their addresses joined by ", "."""
        return ", ".join(r.url for r in self._replicas.replicas)

    def _request(self, client: Any, prompts: Sequence[str], seed: int | None, max_tokens: int,
                 logprobs: int = 0) -> Any:
        """Sends the request and returns the reply's JSON, read up to `max_reply_bytes` (`_ReplyTooLarge` beyond)."""
        args: dict[str, Any] = dict(model=self.model, temperature=self.temperature, top_p=self.top_p)
        if self.stop:
            args["stop"] = self.stop
        args["max_tokens"] = max_tokens
        if self.logit_bias:
            args["logit_bias"] = self.logit_bias
        if self.send_seed and seed is not None:
            args["seed"] = seed
        if logprobs and self.api_style == "completions":
            args["logprobs"] = logprobs
        elif logprobs:
            args.update(logprobs=True, top_logprobs=logprobs)
        if self.api_style == "completions":
            args["prompt"] = prompts[0] if len(prompts) == 1 else list(prompts)
            create = client.completions.with_streaming_response.create
        else:
            if len(prompts) != 1:
                raise ValueError("the chat API takes one prompt per request")
            messages = prompts[0]  # a text is the user's message; a list of {"role", "content"} goes as it is
            args["messages"] = list(messages) if isinstance(messages, list) else [{"role": "user", "content": messages}]
            create = client.chat.completions.with_streaming_response.create
        # The body is read here, in pieces, so that a reply of any size costs at most max_reply_bytes of memory.
        with create(**args) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > self.max_reply_bytes:
                    length = response.headers.get("content-length")
                    raise _ReplyTooLarge(int(length) if length and length.isdigit() else len(body), bytes(body[:4096]))
        return json.loads(body)

    def _parse(self, resp: Any, n_prompts: int) -> tuple[list[Choice], dict[str, int]]:
        choices = resp.get("choices") if isinstance(resp, dict) else None
        if not isinstance(choices, list) or len(choices) != n_prompts:
            error = resp.get("error") if isinstance(resp, dict) else None
            if error:  # some servers and proxies answer 200 with {"error": ...}
                message = error.get("message", error) if isinstance(error, dict) else error
                raise _BadReply(f"the server answered 200 with an error: {message}")
            got = len(choices) if isinstance(choices, list) else type(choices).__name__
            raise _BadReply(f"expected {n_prompts} choice(s) in the reply, got {got}")
        if not all(isinstance(c, dict) for c in choices):
            raise _BadReply("a choice is not a JSON object")
        ordered = sorted(choices, key=lambda c: c.get("index") or 0)
        out = []
        for c in ordered:
            if self.api_style == "completions":
                text = c.get("text")
            else:
                message = c.get("message")
                text = message.get("content") if isinstance(message, dict) else None
                if text is None and isinstance(message, dict):
                    text = ""  # a chat reply with no content (e.g. refused) parses to nothing
            if not isinstance(text, str):
                raise _BadReply("a choice has no text")
            out.append(Choice(text=text, finish_reason=c.get("finish_reason"), first_logprobs=self._first_logprobs(c)))
        usage = {}
        u = resp.get("usage")
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = u.get(key) if isinstance(u, dict) else None
            usage[key] = int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
        return out, usage

    def _first_logprobs(self, choice: dict) -> dict[str, float] | None:
        """{token: logprob} of the first generated token's top alternatives, if the server sent them."""
        lp = choice.get("logprobs")
        try:
            if self.api_style == "completions":
                return {str(k): float(v) for k, v in dict(lp["top_logprobs"][0]).items()}
            return {str(t["token"]): float(t["logprob"]) for t in lp["content"][0]["top_logprobs"]}
        except (KeyError, IndexError, TypeError, ValueError):
            return None

    def _wait(self, attempt: int, exc: BaseException | None) -> None:
        delay = min(self.backoff_max_s, self.backoff_s * (2**attempt)) * (0.5 + random.random() / 2)
        retry_after = server_retry_after(exc)
        if retry_after is not None:
            delay = min(self.backoff_max_s, retry_after)
        self._sleep(delay)

    def complete(self, prompts: Sequence[str], seed: int | None = None, logprobs: int = 0) -> Reply:
        """Sends one request for `prompts` (several only with the completions API) and returns the reply.

        Args:
            prompts: the prompt texts (with the chat API, one text, or one list of messages).
            seed: a per-request seed sent to the server (if send_seed).
            logprobs: ask for this many top alternatives of each generated token (0: none); the first
                token's come back in `Choice.first_logprobs`.
        Returns:
            A Reply with one Choice per prompt, in prompt order, and the usage the server reported.
        Raises:
            GenerationError: a non-retryable error, or retries exhausted.
        """
        start = time.monotonic()
        attempts = 0
        retries = 0
        tried: set[Replica] = set()  # replicas this request failed at since it last waited
        while True:
            attempts += 1
            with self._lock:
                max_tokens = self.max_tokens
            replica = self._replicas.pick(tried)
            outcome: Any = None
            try:
                outcome = self._attempt(replica, prompts, seed, max_tokens, logprobs)
            finally:  # a failure worth retrying marks the replica down; anything else (or none) up
                self._replicas.release(replica, outcome if isinstance(outcome, BaseException) else None)
            if isinstance(outcome, tuple):
                return Reply(*outcome, attempts, time.monotonic() - start, max_tokens, replica.url)
            if outcome is None:  # max_tokens was shrunk: send it again
                continue
            tried.add(replica)
            if self._replicas.any_up(tried):  # another replica takes it now, no retry counted
                continue
            if retries >= self.max_retries:
                raise GenerationError(self._gave_up(replica, attempts, outcome)) from outcome
            self._wait(retries, outcome)
            retries += 1
            tried.clear()

    def _gave_up(self, replica: Replica, attempts: int, failure: BaseException) -> str:
        if len(self._replicas) == 1:
            where = f"request to {replica.url} failed {attempts} times, last with: {_describe(failure)}"
        else:
            where = (f"request failed at every replica ({self.base_url}), {attempts} attempts in all, the last at "
                     f"{replica.url} with: {_describe(failure)}")
        return f"{where}; everything kept so far is saved, re-run the same command to resume"

    def _attempt(self, replica: Replica, prompts: Sequence[str], seed: int | None, max_tokens: int,
                 logprobs: int) -> tuple[list[Choice], dict[str, int]] | BaseException | None:
        """One attempt of a request on `replica`.

        Returns:
            (choices, usage); None when a context-length error shrank `max_tokens` (send it again); or the
            failure, when it is worth retrying (429, 5xx, 408/409, a timeout, a cut connection, an unusable reply).
        Raises:
            GenerationError: a failure that retrying will not fix, naming the replica.
        """
        import openai  # imported by _make_openai_client already; here for its error types

        url = replica.url
        try:
            resp = self._request(replica.client, prompts, seed, max_tokens, logprobs)
            return self._parse(resp, len(prompts))
        except _ReplyTooLarge as e:  # not retried: another such reply would cost as much again
            head = e.head.decode("utf-8", errors="replace")
            return [Choice(text=head, finish_reason=None, size=e.size) for _ in prompts], {}
        except openai.BadRequestError as e:
            if not is_context_length_error(e):
                raise GenerationError(f"{url} rejected the request (400): {e.message}") from e
            shrunk = int(max_tokens * 0.8)
            if shrunk < 1:
                raise GenerationError(
                    f"the prompt alone exceeds {self.model}'s context ({e.message}); use a model with a "
                    "longer context or fewer --num_prompt_instructions"
                ) from e
            with self._lock:
                # Another thread may have shrunk it already; keep the smaller value.
                self.max_tokens = min(self.max_tokens, shrunk)
            return None
        except openai.AuthenticationError as e:
            raise GenerationError(f"{url} refused the API key (401): set OPENAI_API_KEY or --api_key") from e
        except openai.PermissionDeniedError as e:
            raise GenerationError(f"{url} denied access (403): {e.message}; check --organization / OPENAI_ORG") from e
        except openai.NotFoundError as e:
            raise GenerationError(
                f"{url} answered 404 for model {self.model!r} ({self.api_style} API): {e.message}; "
                "check --model_name, --base_url, and --api_style (a chat model needs api_style=chat)"
            ) from e
        except openai.APIStatusError as e:
            if e.status_code < 500 and e.status_code not in _RETRY_STATUS:
                raise GenerationError(f"{url} answered {e.status_code}: {e.message}") from e
            return e
        except (openai.APIConnectionError, openai.APIResponseValidationError, _BadReply, json.JSONDecodeError,
                *_transport_errors()) as e:
            # JSONDecodeError: a 200 whose body is not JSON (a proxy's error page, a cut connection).
            return e


def _split_query(url: str) -> tuple[str, str]:
    """`url` without its query (and fragment), and the query.

    Raises:
        UsageError: a query key given twice (the client sends each key once).
    """
    parts = urlsplit(url)
    names = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"--base_url {redact_url(url)}: the query gives {', '.join(twice)} more than once; "
                         "keep one value of each")
    return urlunsplit(parts._replace(query="", fragment="")), parts.query


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's errors for a connection cut or timed out while the body is read (httpx, or httpx2)."""
    return tuple(m.TransportError for m in (sys.modules.get("httpx"), sys.modules.get("httpx2")) if m is not None)


class _BadReply(Exception):
    """A 200 reply without the choices we asked for (a server glitch worth retrying)."""


class _ReplyTooLarge(Exception):
    """A reply body over `max_reply_bytes`: its size (from Content-Length, else the bytes read) and first bytes."""

    def __init__(self, size: int, head: bytes):
        super().__init__(f"a reply of {size} bytes")
        self.size, self.head = size, head


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, _BadReply):  # our own words about the reply
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
