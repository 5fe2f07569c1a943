"""The generator's settings: `GenerateConfig`, the only place where a generation default lives.

    python -m generate_instruction generate_instruction_following_data --help   # lists these fields

`GenerateConfig` adds the self-instruct run's own settings to `alpaca_lib.llm.ClientConfig` (how to reach
the model). `generate_instruction.py` builds its command line from it (`cli_signature`, `cli_docstring`),
so a flag, its default and its help are written once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alpaca_lib.core.commands import flag, is_int
from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import expand_home_fields
from alpaca_lib.core.rouge import TOKENIZERS
from alpaca_lib.llm.config import ClientConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT_PATH = REPO_ROOT / "prompt.txt"  # the meta-prompt, next to generate_instruction.py
SEED_TASKS_PATH = REPO_ROOT / "seed_tasks.jsonl"


@dataclass
class GenerateConfig(ClientConfig):
    """A self-instruct run: where it writes, what it shows the model, when it stops."""

    output_dir: str = flag("Where regen.json and the journal regen.journal.jsonl go.", "./")
    seed_tasks_path: str = flag("Self-instruct seed tasks (JSON lines); default: seed_tasks.jsonl next to the script.",
                                str(SEED_TASKS_PATH))
    prompt_path: str = flag(
        "The meta-prompt, e.g. one written in another language (the examples after it keep their numbered "
        "'Instruction:/Input:/Output:' labels, which the reply parser reads); default: prompt.txt next to the script.",
        str(PROMPT_PATH),
    )
    num_instructions_to_generate: int = flag("Stop once this many instructions are kept.", 100)
    num_prompt_instructions: int = flag("Seed tasks shown in each prompt.", 3)
    request_batch_size: int = flag("Prompts per batch (sent concurrently, then decided together).", 5)
    num_cpus: int = flag("Threads for the ROUGE-L dedup (capped at the machine's cores).", 16)
    max_concurrency: int | None = flag("Requests in flight at once; default request_batch_size.", None)
    prompts_per_request: int = flag(
        "Completions API only: prompts sent in one request (the original sent the whole batch in one; many local "
        "servers take one).", 1,
    )
    seed: int | None = flag(
        "Makes prompt sampling (and per-request server seeds) reproducible; default: random, recorded in the journal "
        "so a resumed run continues the same sequence.", None,
    )
    price_table: Any = flag(
        "{model: [prompt, completion] USD per 1M tokens} (JSON, or a path to a JSON file), merged over the built-in "
        "table, for the cost estimate.", None,
    )
    max_batches: int | None = flag("Stop after this many batches in this invocation (re-run to continue).", None)
    keep_other_scripts: bool = flag(
        "Keep instructions in other scripts: one may start with a letter or digit of any script (the original drops "
        "every instruction that starts with a non-ASCII character), and each Chinese or Japanese character counts as "
        "a word in the 3 < words <= 150 rule. Off: the original filter.", False,
    )
    rouge_tokenizer: str = flag(
        "Tokens of the ROUGE-L dedup. words: rouge_score's, as the original (lowercase runs of [a-z0-9]: an "
        "instruction in another script has no tokens, scores 0 against everything and is never dropped as similar). "
        "chars: the same ASCII runs plus every other letter or digit as a token of its own (character-level ROUGE-L "
        "for Chinese and Japanese; text in ASCII letters scores exactly as with words).", "words",
    )
    max_empty_batches: int = flag(
        "Stop (exit status 1) once this many batches in a row have kept nothing: the replies are not usable as they "
        "are (a server that echoes the prompt, a wrong model or --api_style), and every further request would be "
        "paid for in vain. The message gives the reasons the items were dropped and what was spent; re-run to go on.",
        20,
    )
    max_reply_chars: int = flag(
        "A reply longer than this is dropped as oversized (a 3072-token reply is some 15,000 characters): only its "
        "first 1,000 characters and its size are journaled, so the journal and the memory stay bounded whatever the "
        "server sends.", 65536,
    )
    save_every_s: float = flag(
        "Rewrite regen.json at most this often (the journal is always current; the file is also written at the end).",
        60.0,
    )

    def __post_init__(self):
        super().__post_init__()
        expand_home_fields(self, "output_dir", "seed_tasks_path", "prompt_path")

    def check(self) -> None:
        super().check()
        positive = {
            "num_instructions_to_generate": self.num_instructions_to_generate,
            "num_prompt_instructions": self.num_prompt_instructions,
            "request_batch_size": self.request_batch_size,
            "num_cpus": self.num_cpus,
            "prompts_per_request": self.prompts_per_request,
            "max_empty_batches": self.max_empty_batches,
            "max_reply_chars": self.max_reply_chars,
        }
        if self.max_concurrency is not None:
            positive["max_concurrency"] = self.max_concurrency
        if self.max_batches is not None:
            positive["max_batches"] = self.max_batches
        for name, value in positive.items():
            if not is_int(value) or value < 1:
                raise UsageError(f"--{name} must be a positive integer; got {value!r}")
        if self.seed is not None and not is_int(self.seed):
            raise UsageError(f"--seed must be an integer; got {self.seed!r}")
        if self.rouge_tokenizer not in TOKENIZERS:
            raise UsageError(f"--rouge_tokenizer must be one of {', '.join(TOKENIZERS)}; got {self.rouge_tokenizer!r}")
        if not isinstance(self.keep_other_scripts, bool):
            raise UsageError(f"--keep_other_scripts must be True or False; got {self.keep_other_scripts!r}")
