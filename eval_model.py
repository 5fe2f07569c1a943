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

import time
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
    request_timeout: float = 300.0,
    max_retries: int = 6,
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
        request_timeout: seconds before a request to the server counts as failed (it is then retried).
        max_retries: retries of one request after 429/5xx/timeouts/connection errors.
    """
    from alpaca_lib.errors import UsageError
    from alpaca_lib.locking import output_lock
    from alpaca_lib.preflight import check_model_source, check_output_file
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
    if model_dir is not None:
        check_model_source(model_dir, gguf_file, flag="--model_dir", hub=False)
    check_output_file(output_path, "--output_path", {"--instructions_path": instructions_path})
    records = load_instructions(instructions_path)
    run = {"instructions_sha256": file_digest(instructions_path), **vars(settings)}
    if model_dir is not None:
        prompts = [prompt_of(r) for r in records]

        def answer_batches(todo):  # the model loads only when there is something left to answer
            model = LocalModel.load(model_dir, gguf_file, dtype)
            for idx, answers in model.answer([prompts[i] for i in todo], settings, batch_size):
                yield [todo[i] for i in idx], answers

        identity = LocalModel.fingerprint(model_dir, gguf_file)
        generator = generator or Path(model_dir).resolve().name
    else:
        from alpaca_lib.llm.client import CompletionClient

        client = CompletionClient(model_name, base_url=base_url, api_key=api_key, api_style=api_style,
                                  max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                                  top_p=top_p if do_sample else 1.0, logit_bias=None, stop=[],
                                  request_timeout=request_timeout, max_retries=max_retries)
        model = ServedModel(client, max_concurrency)
        identity = model.fingerprint()

        def answer_batches(todo):
            for idx, answers in model.answer([records[i] for i in todo], settings):
                yield [todo[i] for i in idx], answers

        generator = generator or model_name
    run.update(identity, generator=generator)
    target = Path(output_path)
    with output_lock(target.parent, f"eval_model.py outputs --output_path {output_path}", name=f".{target.name}.lock"):
        written = write_outputs(records, answer_batches, output_path, generator, run)
    stopped = sum(r["stop_reason"] == "length" for r in written)
    print(f"wrote {len(written)} outputs of {generator} to {output_path}"
          + (f" ({stopped} hit --max_new_tokens {max_new_tokens})" if stopped else ""))


def judge(
    model_outputs: str,
    reference_outputs: str,
    judge_model: str,
    output_dir: str,
    base_url: Optional[str] = None,
    api_key: Optional[str] = None,
    api_style: str = "chat",
    max_concurrency: int = 8,
    logprobs: bool = True,
    max_unreadable_retries: int = 2,
    price_table: Optional[str] = None,
    request_timeout: float = 300.0,
    max_retries: int = 6,
) -> None:
    """Judges model outputs against reference outputs pairwise: win rate, summary, report, leaderboard.

    Args:
        model_outputs: the model's outputs (`eval_model.py outputs`, or any AlpacaEval-format JSON).
        reference_outputs: the outputs it is compared with, on the same instructions.
        judge_model: the judge's name on the server.
        output_dir: summary.json, annotations.json, report.md, judge.png and the journal; leaderboard.csv
            goes beside it.
        base_url: an OpenAI-compatible server; default OPENAI_BASE_URL, else OpenAI.
        api_key: default OPENAI_API_KEY (a local server needs none).
        api_style: chat or completions.
        max_concurrency: requests in flight at once.
        logprobs: ask for the verdict letter's log probabilities (weighting used when every reply has them).
        max_unreadable_retries: asks again this often when a reply names no letter, then leaves the pair out.
        price_table: {model: [prompt, completion] USD per 1M tokens} (JSON or a path) for the cost estimate.
        request_timeout: seconds before a request counts as failed (it is then retried).
        max_retries: retries of one request after 429/5xx/timeouts/connection errors.
    """
    import json

    from alpaca_lib.errors import UsageError
    from alpaca_lib.fileio import atomic_write
    from alpaca_lib.locking import output_lock
    from alpaca_lib.judge import PROMPT_VERSION, judge_pairs, pair_records, record_on_leaderboard, summarize
    from alpaca_lib.outputs import file_digest
    from alpaca_lib.report import CHART_NAME, draw_chart, write_report
    from alpaca_lib.llm.pricing import load_price_table
    from alpaca_lib.data import load_records
    from alpaca_lib.llm.client import CompletionClient

    from alpaca_lib.preflight import check_not_an_input, check_output_dir

    check_output_dir(output_dir, "--output_dir")
    check_not_an_input(output_dir, "--output_dir", {"--model_outputs": model_outputs,
                                                    "--reference_outputs": reference_outputs})
    fields = dict(required=("instruction", "output"), optional=("input", "dataset", "generator"))
    model = load_records(model_outputs, flag="--model_outputs", **fields)
    reference = load_records(reference_outputs, flag="--reference_outputs", **fields)
    pairing = pair_records(model, reference)
    if not pairing.pairs:
        raise UsageError(f"{model_outputs} and {reference_outputs} share no instruction: nothing to judge. "
                         f"{pairing.report()}")
    note = pairing.report()
    if note:
        print(f"pairing: {note}")
    prices = load_price_table(price_table)
    client = CompletionClient(judge_model, base_url=base_url, api_key=api_key, api_style=api_style,
                              max_tokens=4, temperature=0.0, logit_bias=None, stop=[],
                              request_timeout=request_timeout, max_retries=max_retries)
    out = Path(output_dir)  # made (by the lock) only once everything above has passed
    # What a resumed run must share (not the server's address: a local server may come back on another port).
    run = {"judge_model": judge_model, "api_style": api_style, "prompt_version": PROMPT_VERSION,
           "model_outputs_sha256": file_digest(model_outputs),
           "reference_outputs_sha256": file_digest(reference_outputs)}
    with output_lock(out, f"eval_model.py judge --output_dir {output_dir}"):  # one judge run per folder
        result = judge_pairs(client, pairing, out, run, max_concurrency, max_unreadable_retries, 5 if logprobs else 0)
        weighting = "logprobs" if logprobs and result["all_logprobs"] else "discrete"
        summary = {
            "model": _name_of(model, model_outputs), "reference": _name_of(reference, reference_outputs),
            **summarize(result["verdicts"], weighting, len(result["unreadable"])),
            "judge_model": judge_model, "prompt_version": PROMPT_VERSION, "usage": result["usage"],
            "n_only_in_model": len(pairing.only_model), "n_only_in_reference": len(pairing.only_reference),
            "n_duplicated": len(pairing.duplicated),
        }
        price = prices.get(judge_model)
        summary["cost_usd"] = None if price is None else (
            result["usage"]["prompt_tokens"] * price[0] + result["usage"]["completion_tokens"] * price[1]) / 1e6
        if summary["n_pairs"] == 0:
            raise UsageError(f"no pair got a readable verdict from {judge_model} ({summary['n_unreadable']} unreadable); "
                             "check that the judge answers with a letter (see annotations.json).")
        with atomic_write(out / "summary.json") as f:
            json.dump(summary, f, indent=2)
        with atomic_write(out / "annotations.json") as f:
            json.dump(result["verdicts"] + result["unreadable"], f, indent=2, ensure_ascii=False)
        with output_lock(out.parent, "eval_model.py judge (leaderboard)", name=".leaderboard.csv.lock", wait=True):
            board = record_on_leaderboard(out.parent / "leaderboard.csv",
                                          {**summary, "updated": time.strftime("%Y-%m-%d %H:%M")})
        draw_chart(out / CHART_NAME, board, [len(v["output_model"]) for v in result["verdicts"]],
                   [len(v["output_reference"]) for v in result["verdicts"]], summary["model"], summary["reference"])
        write_report(out, summary, result["verdicts"], note)
        se = summary["standard_error"] or 0.0
        print(f"win rate of {summary['model']} vs {summary['reference']}: {summary['win_rate']:.1f}% ± {se:.1f} "
              f"({summary['n_pairs']} pairs, {weighting}); report: {out / 'report.md'}")


def _name_of(records: list, path: str) -> str:
    """A side's name: its records' `generator`, else its file's name."""
    return records[0].get("generator") or Path(path).stem


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


COMMANDS = {"outputs": outputs, "judge": judge, "chat": chat}


def main(argv: Optional[list] = None) -> None:
    import sys

    import fire

    from alpaca_lib.errors import UsageError, exit_with
    from alpaca_lib.preflight import check_fire_flags
    from alpaca_lib.llm.client import GenerationError

    from alpaca_lib.config_file import expand_fire_config

    argv = sys.argv[1:] if argv is None else argv
    try:
        argv = expand_fire_config(argv, COMMANDS, "eval_model.py")  # --config FILE: flags from YAML
        check_fire_flags(argv, COMMANDS, "eval_model.py")
        fire.Fire(COMMANDS, command=argv)
    except (UsageError, GenerationError) as e:
        exit_with(e)


if __name__ == "__main__":
    main()
