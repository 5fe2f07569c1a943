"""Evaluate a tuned model, the other half of Alpaca: its answers to an evaluation set, and a chat.

    python eval_model.py outputs --model_dir runs/demo --instructions_path eval_instructions.json \\
        --output_path runs/demo/model_outputs.json
    python eval_model.py outputs --base_url http://127.0.0.1:8000/v1 --model_name M \\
        --instructions_path eval_instructions.json --output_path runs/M/model_outputs.json
    python eval_model.py chat --model_dir runs/demo

`outputs` writes AlpacaEval's format (alpaca_lib/outputs.py): batched generation for a local model, any
OpenAI-compatible server for a served one, a journal that makes a killed run continue where it stopped.
(The name does not shadow the `evaluate` or `alpaca_eval` packages when run from this folder.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from alpaca_lib.outputs import GenerationSettings


def outputs(
    instructions_path: str,
    output_path: str,
    model_dir: Optional[str] = None,
    gguf_file: Optional[str] = None,
    base_url: Optional[str] = None,
    model_name: Optional[str] = None,
    api_style: str = "completions",
    api_key: Optional[str] = None,
    generator: Optional[str] = None,
    batch_size: int = 16,
    max_concurrency: int = 8,
    max_new_tokens: int = GenerationSettings.max_new_tokens,
    do_sample: bool = GenerationSettings.do_sample,
    temperature: float = GenerationSettings.temperature,
    top_p: float = GenerationSettings.top_p,
    seed: int = GenerationSettings.seed,
    dtype: str = "auto",
) -> None:
    """Writes the model's answer to every instruction of an evaluation set, in AlpacaEval's format.

    Args:
        instructions_path: AlpacaEval JSON ({"instruction", "dataset"?, ...}) or Alpaca JSON / JSON Lines.
        output_path: the JSON to write; its journal goes beside it (re-run the command to continue).
        model_dir: a local model (train.py's --output_dir, or a folder holding --gguf_file).
        gguf_file: a GGUF file inside --model_dir to load instead of safetensors.
        base_url: instead of --model_dir, an OpenAI-compatible server (vLLM, transformers serve, llama.cpp).
        model_name: the served model's name (with --base_url).
        api_style: completions (the Alpaca template as text) or chat (the instruction as a user message).
        api_key: for the server; default OPENAI_API_KEY (a local server needs none).
        generator: the name recorded in each record; default the model folder's name or --model_name.
        batch_size: prompts generated together by a local model.
        max_concurrency: requests in flight at once to a server.
        max_new_tokens: most tokens per answer.
        do_sample: sample instead of greedy decoding (then --temperature, --top_p, --seed).
        dtype: a local model's weights: auto (bfloat16 on a GPU, float32 on CPU), float32, bfloat16, float16.
    """
    from alpaca_lib.errors import UsageError
    from alpaca_lib.outputs import (
        LocalModel,
        ServedModel,
        file_digest,
        load_instructions,
        prompt_of,
        write_outputs,
    )

    settings = GenerationSettings(max_new_tokens, do_sample, temperature, top_p, seed)
    settings.check()
    if (model_dir is None) == (base_url is None):
        raise UsageError("give either --model_dir (a local model) or --base_url with --model_name (a served one).")
    if base_url is not None and not model_name:
        raise UsageError("--base_url needs --model_name: the name the server knows the model by.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"--batch_size must be a positive integer; got {batch_size!r}")
    if model_dir is not None and not Path(model_dir).is_dir():
        raise UsageError(f"--model_dir {model_dir}: no such folder (a saved model, e.g. train.py's --output_dir).")
    if Path(output_path).resolve() == Path(instructions_path).resolve():
        raise UsageError("--output_path is the --instructions_path file; write the outputs to another file.")
    records = load_instructions(instructions_path)
    run = {"instructions_sha256": file_digest(instructions_path), **{k: v for k, v in vars(settings).items()}}
    if model_dir is not None:
        model = LocalModel.load(model_dir, gguf_file, dtype)
        prompts = [prompt_of(r) for r in records]

        def answer_batches(todo):
            for idx, answers in model.answer([prompts[i] for i in todo], settings, batch_size):
                yield [todo[i] for i in idx], answers

        generator = generator or Path(model_dir).resolve().name
    else:
        from alpaca_lib.selfinstruct.client import CompletionClient

        client = CompletionClient(model_name, base_url=base_url, api_key=api_key, api_style=api_style,
                                  max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                                  top_p=top_p if do_sample else 1.0, logit_bias=None, stop=[])
        model = ServedModel(client, max_concurrency)

        def answer_batches(todo):
            for idx, answers in model.answer([records[i] for i in todo], settings):
                yield [todo[i] for i in idx], answers

        generator = generator or model_name
    run.update(model.fingerprint(), generator=generator)
    written = write_outputs(records, answer_batches, output_path, generator, run)
    stopped = sum(r["stop_reason"] == "length" for r in written)
    print(f"wrote {len(written)} outputs of {generator} to {output_path}"
          + (f" ({stopped} hit --max_new_tokens {max_new_tokens})" if stopped else ""))


def chat(model_dir: str, gguf_file: Optional[str] = None, max_new_tokens: int = 512, do_sample: bool = False,
         temperature: float = GenerationSettings.temperature, top_p: float = GenerationSettings.top_p) -> None:
    """Talk to a model through the Alpaca template: an instruction (and optionally an input) per turn.

    Args:
        model_dir: a saved model (train.py's --output_dir).
        gguf_file: a GGUF file inside --model_dir to load instead.
        max_new_tokens: most tokens per answer.
        do_sample: sample instead of greedy decoding.
    """
    from alpaca_lib.infer import chat_loop

    chat_loop(model_dir, gguf_file, max_new_tokens, do_sample, temperature, top_p)


def main() -> None:
    import fire

    from alpaca_lib.errors import UsageError, exit_with
    from alpaca_lib.selfinstruct.client import GenerationError

    try:
        fire.Fire({"outputs": outputs, "chat": chat})
    except (UsageError, GenerationError) as e:
        exit_with(e)


if __name__ == "__main__":
    main()
