"""Self-instruct generation of Alpaca-style instruction data, and its export to a training file.

    python -m generate_instruction generate_instruction_following_data \\
        --output_dir=runs/regen --num_instructions_to_generate=100 --model_name=gpt-3.5-turbo-instruct --seed=0
    python -m generate_instruction to_alpaca --input_path=runs/regen --output_path=alpaca_data.json

The algorithm is the original Alpaca generator's (see alpaca_lib/generation/): the same prompt
layout, reply filters, ROUGE-L > 0.7 dedup with the top-10 most similar instructions and the mean
similarity recorded on each kept item, and the same stopping rule. What it runs on is today's: the
`openai` client (>= 1.x) with the completions or chat API against OpenAI or any OpenAI-compatible
server, bounded retries, concurrent requests, a journal that makes any interrupted run resumable by
re-running the same command, and token/cost accounting.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, Mapping, Sequence

from alpaca_lib.core.cli import run_fire
from alpaca_lib.core.commands import cli_docstring, cli_signature
from alpaca_lib.generation import postprocess as _pp
from alpaca_lib.generation.config import PROMPT_PATH, GenerateConfig
from alpaca_lib.generation.export import export_alpaca
from alpaca_lib.generation.runner import run_generation
from alpaca_lib.llm.client import GenerationError

find_word_in_string = _pp.find_word_in_string


def encode_prompt(prompt_instructions: Sequence[Mapping[str, str]], prompt_text: str | None = None) -> str:
    """Encodes seed examples into one request prompt, after the meta-prompt in prompt.txt.

    Args:
        prompt_instructions: records with "instruction", "input" and "output".
        prompt_text: the meta-prompt; None reads prompt.txt next to this script.
    Returns:
        The prompt, ending in "<k+1>. Instruction:".
    """
    if prompt_text is None:
        prompt_text = PROMPT_PATH.read_text(encoding="utf-8")
    return _pp.encode_prompt(prompt_instructions, prompt_text)


def post_process_gpt3_response(
    num_prompt_instructions: int, response: Mapping[str, Any] | None, stats: Counter | None = None
) -> list[dict[str, str]]:
    """Splits a reply ({"text", "finish_reason"}) into records and applies the original filters."""
    return _pp.post_process_gpt3_response(num_prompt_instructions, response, stats)


def generate_instruction_following_data(**settings: Any) -> None:
    run_generation(GenerateConfig(**settings))


# The flags, their defaults and their help come from GenerateConfig (alpaca_lib/generation/config.py).
generate_instruction_following_data.__signature__ = cli_signature(GenerateConfig)
generate_instruction_following_data.__doc__ = cli_docstring(
    GenerateConfig, "Generates instruction-following data into output_dir/regen.json (resumes if run again)."
)


def to_alpaca(input_path: str = "./", output_path: str = "alpaca_data.json") -> None:
    """Converts a run's output (its directory, regen.json or journal) to Alpaca training data.

    Args:
        input_path: the run's output_dir, or its regen.json or regen.journal.jsonl.
        output_path: where to write the JSON list of {instruction, input, output} (atomically).
    """
    export_alpaca(input_path, output_path)


def main() -> None:
    commands = {"generate_instruction_following_data": generate_instruction_following_data, "to_alpaca": to_alpaca}
    try:  # a server that kept failing is an `error:` line too, not a traceback
        run_fire(commands, "generate_instruction.py", errors=(GenerationError,))
    except KeyboardInterrupt:
        print("interrupted; everything kept so far is in the journal: re-run the same command to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
