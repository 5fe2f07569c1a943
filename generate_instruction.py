"""Self-instruct generation of Alpaca-style instruction data, and its export to a training file.

    python -m generate_instruction generate_instruction_following_data \\
        --output_dir=runs/regen --num_instructions_to_generate=100 --model_name=gpt-3.5-turbo-instruct --seed=0
    python -m generate_instruction to_alpaca --input_path=runs/regen --output_path=alpaca_data.json

The algorithm is the original Alpaca generator's (see alpaca_lib/selfinstruct/): the same prompt
layout, reply filters, ROUGE-L > 0.7 dedup with the top-10 most similar instructions and the mean
similarity recorded on each kept item, and the same stopping rule. What it runs on is today's: the
`openai` client (>= 1.x) with the completions or chat API against OpenAI or any OpenAI-compatible
server, bounded retries, concurrent requests, a journal that makes any interrupted run resumable by
re-running the same command, and token/cost accounting.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from alpaca_lib.selfinstruct import postprocess as _pp

PROMPT_PATH = Path(__file__).with_name("prompt.txt")
SEED_TASKS_PATH = Path(__file__).with_name("seed_tasks.jsonl")
# text-davinci-003, the original default, is retired; this is OpenAI's remaining completions model.
DEFAULT_MODEL = "gpt-3.5-turbo-instruct"

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


def generate_instruction_following_data(
    output_dir: str = "./",
    seed_tasks_path: str = str(SEED_TASKS_PATH),
    num_instructions_to_generate: int = 100,
    model_name: str = DEFAULT_MODEL,
    num_prompt_instructions: int = 3,
    request_batch_size: int = 5,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_cpus: int = 16,
    api_style: str = "auto",
    base_url: str | None = None,
    api_key: str | None = None,
    organization: str | None = None,
    max_concurrency: int | None = None,
    prompts_per_request: int = 1,
    seed: int | None = None,
    max_tokens: int = 3072,
    logit_bias: Any = "auto",
    send_seed: bool = True,
    request_timeout: float = 300.0,
    max_retries: int = 6,
    price_table: Any = None,
    max_batches: int | None = None,
    save_every_s: float = 60.0,
) -> None:
    """Generates instruction-following data into output_dir/regen.json (resumes if run again).

    Args:
        output_dir: where regen.json and the journal regen.journal.jsonl go.
        seed_tasks_path: self-instruct seed tasks (JSON lines); default: seed_tasks.jsonl next to this script.
        num_instructions_to_generate: stop once this many items are kept.
        model_name: the model the server knows.
        num_prompt_instructions: seed examples shown in each prompt.
        request_batch_size: prompts per batch (sent concurrently; decided together).
        temperature, top_p: sampling settings.
        num_cpus: threads for the ROUGE-L dedup (capped at the machine's cores).
        api_style: "auto" (completions for *-instruct, davinci-002, babbage-002, text-*; chat
            otherwise), "completions" or "chat".
        base_url: an OpenAI-compatible server, e.g. http://localhost:8000/v1; default OPENAI_BASE_URL or OpenAI.
        api_key: default OPENAI_API_KEY (not needed for a local server).
        organization: default OPENAI_ORG, then OPENAI_ORG_ID.
        max_concurrency: requests in flight at once; default request_batch_size.
        prompts_per_request: completions API only: prompts sent in one request (the original sent
            the whole batch in one; many local servers take one).
        seed: makes prompt sampling (and per-request server seeds) reproducible; default: random,
            recorded in the journal so a resumed run continues the same sequence.
        max_tokens: starting max_tokens; shrunk by 0.8 on a context-length error.
        logit_bias: "auto" (ban <|endoftext|> on OpenAI completion models only), "none", or a dict.
        send_seed: send a per-request `seed` to the server.
        request_timeout: seconds before a request times out (then it is retried).
        max_retries: retries per request for 429/5xx/timeouts/connection errors.
        price_table: {model: [prompt, completion] USD per 1M tokens} (JSON or a path to JSON),
            merged over the built-in table, for the cost estimate.
        max_batches: stop after this many batches in this invocation (re-run to continue).
        save_every_s: rewrite regen.json at most this often (the journal is always current; the
            file is also written at the end).
    """
    from alpaca_lib.selfinstruct.runner import GenerateConfig, run_generation

    if isinstance(logit_bias, str) and logit_bias.lower() in ("none", "null", ""):
        logit_bias = None
    elif isinstance(logit_bias, str) and logit_bias != "auto":
        import json

        try:
            logit_bias = json.loads(logit_bias)
        except json.JSONDecodeError:
            raise ValueError(f"--logit_bias must be auto, none, or a JSON object like '{{\"50256\": -100}}'; got {logit_bias!r}") from None
    cfg = GenerateConfig(
        output_dir=str(output_dir),
        seed_tasks_path=str(seed_tasks_path),
        prompt_path=str(PROMPT_PATH),
        num_instructions_to_generate=num_instructions_to_generate,
        model_name=model_name,
        num_prompt_instructions=num_prompt_instructions,
        request_batch_size=request_batch_size,
        temperature=temperature,
        top_p=top_p,
        num_cpus=num_cpus,
        api_style=api_style,
        base_url=base_url,
        api_key=api_key,
        organization=organization,
        max_concurrency=max_concurrency,
        prompts_per_request=prompts_per_request,
        seed=seed,
        max_tokens=max_tokens,
        logit_bias=logit_bias,
        send_seed=send_seed,
        request_timeout=request_timeout,
        max_retries=max_retries,
        price_table=price_table,
        max_batches=max_batches,
        save_every_s=save_every_s,
    )
    run_generation(cfg)


def to_alpaca(input_path: str = "./", output_path: str = "alpaca_data.json") -> None:
    """Converts a run's output (its directory, regen.json or journal) to Alpaca training data.

    Args:
        input_path: the run's output_dir, or its regen.json or regen.journal.jsonl.
        output_path: where to write the JSON list of {instruction, input, output} (atomically).
    """
    from alpaca_lib.selfinstruct.runner import export_alpaca

    export_alpaca(input_path, output_path)


def main() -> None:
    import sys

    import fire

    from alpaca_lib.selfinstruct.client import GenerationError

    try:
        fire.Fire({"generate_instruction_following_data": generate_instruction_following_data, "to_alpaca": to_alpaca})
    except (ValueError, FileNotFoundError, GenerationError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; everything kept so far is in the journal: re-run the same command to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
