"""The generator's settings: one typed config per concern, the only place where a default lives.

    python -m generate_instruction generate_instruction_following_data --help   # lists these fields

`ClientConfig` is how to reach an LLM and what every request carries (any command that calls one can
reuse it, with `CompletionClient.from_config`); `GenerateConfig` adds the self-instruct run's own
settings. `generate_instruction.py` builds its command line from `GenerateConfig` (`cli_signature`,
`cli_docstring`), so a flag, its default and its help are written once, here.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from alpaca_lib.errors import UsageError

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT_PATH = REPO_ROOT / "prompt.txt"  # the meta-prompt, next to generate_instruction.py
SEED_TASKS_PATH = REPO_ROOT / "seed_tasks.jsonl"
# text-davinci-003, the original default, is retired; this is OpenAI's remaining completions model.
DEFAULT_MODEL = "gpt-3.5-turbo-instruct"
API_STYLES = ("auto", "completions", "chat")


def _help(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    return field(default=default, metadata={"help": text}, **kw)


def redact_url(url: str | None) -> str | None:
    """`url` without the `user:password@` part: what may be written to a journal, a log or a report."""
    if not url:
        return url
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


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


@dataclass
class GenerateConfig(ClientConfig):
    """A self-instruct run: where it writes, what it shows the model, when it stops."""

    output_dir: str = _help("Where regen.json and the journal regen.journal.jsonl go.", "./")
    seed_tasks_path: str = _help("Self-instruct seed tasks (JSON lines); default: seed_tasks.jsonl next to the script.",
                                 str(SEED_TASKS_PATH))
    prompt_path: str = _help(
        "The meta-prompt, e.g. one written in another language (the examples after it keep their numbered "
        "'Instruction:/Input:/Output:' labels, which the reply parser reads); default: prompt.txt next to the script.",
        str(PROMPT_PATH),
    )
    num_instructions_to_generate: int = _help("Stop once this many instructions are kept.", 100)
    num_prompt_instructions: int = _help("Seed tasks shown in each prompt.", 3)
    request_batch_size: int = _help("Prompts per batch (sent concurrently, then decided together).", 5)
    num_cpus: int = _help("Threads for the ROUGE-L dedup (capped at the machine's cores).", 16)
    max_concurrency: int | None = _help("Requests in flight at once; default request_batch_size.", None)
    prompts_per_request: int = _help(
        "Completions API only: prompts sent in one request (the original sent the whole batch in one; many local "
        "servers take one).", 1,
    )
    seed: int | None = _help(
        "Makes prompt sampling (and per-request server seeds) reproducible; default: random, recorded in the journal "
        "so a resumed run continues the same sequence.", None,
    )
    price_table: Any = _help(
        "{model: [prompt, completion] USD per 1M tokens} (JSON, or a path to a JSON file), merged over the built-in "
        "table, for the cost estimate.", None,
    )
    max_batches: int | None = _help("Stop after this many batches in this invocation (re-run to continue).", None)
    keep_other_scripts: bool = _help(
        "Keep instructions in other scripts: one may start with a letter or digit of any script (the original drops "
        "every instruction that starts with a non-ASCII character), and each Chinese or Japanese character counts as "
        "a word in the 3 < words <= 150 rule. Off: the original filter.", False,
    )
    rouge_tokenizer: str = _help(
        "Tokens of the ROUGE-L dedup. words: rouge_score's, as the original (lowercase runs of [a-z0-9]: an "
        "instruction in another script has no tokens, scores 0 against everything and is never dropped as similar). "
        "chars: the same ASCII runs plus every other letter or digit as a token of its own (character-level ROUGE-L "
        "for Chinese and Japanese; text in ASCII letters scores exactly as with words).", "words",
    )
    save_every_s: float = _help(
        "Rewrite regen.json at most this often (the journal is always current; the file is also written at the end).",
        60.0,
    )

    def check(self) -> None:
        super().check()
        positive = {
            "num_instructions_to_generate": self.num_instructions_to_generate,
            "num_prompt_instructions": self.num_prompt_instructions,
            "request_batch_size": self.request_batch_size,
            "num_cpus": self.num_cpus,
            "prompts_per_request": self.prompts_per_request,
        }
        if self.max_concurrency is not None:
            positive["max_concurrency"] = self.max_concurrency
        if self.max_batches is not None:
            positive["max_batches"] = self.max_batches
        for name, value in positive.items():
            if not _is_int(value) or value < 1:
                raise UsageError(f"--{name} must be a positive integer; got {value!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise UsageError(f"--seed must be an integer; got {self.seed!r}")
        from .rouge import TOKENIZERS

        if self.rouge_tokenizer not in TOKENIZERS:
            raise UsageError(f"--rouge_tokenizer must be one of {', '.join(TOKENIZERS)}; got {self.rouge_tokenizer!r}")
        if not isinstance(self.keep_other_scripts, bool):
            raise UsageError(f"--keep_other_scripts must be True or False; got {self.keep_other_scripts!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def client_settings(config: ClientConfig) -> dict[str, Any]:
    """The `ClientConfig` fields of `config` (which may be a subclass) as keyword arguments."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(ClientConfig)}


def cli_signature(config_cls: type) -> inspect.Signature:
    """A keyword-only signature with the config's fields and defaults, for `fire` to build flags from."""
    hints = typing.get_type_hints(config_cls)
    params = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in dataclasses.fields(config_cls)
    ]
    return inspect.Signature(params, return_annotation=None)


def cli_docstring(config_cls: type, summary: str) -> str:
    """`summary` and an Args section made of the fields' help texts, for `fire --help`."""
    lines = [summary, "", "Args:"]
    lines += [f"    {f.name}: {f.metadata['help']}" for f in dataclasses.fields(config_cls)]
    return "\n".join(lines)
