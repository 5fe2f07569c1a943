"""Time of the ROUGE-L dedup of one batch of candidates against pools of 5K and 50K instructions.

    .venv/bin/python bench/bench_rouge.py [--candidates 100] [--workers 2]

Fast: RougeLPool.filter_batch (rapidfuzz LCS over token code points), measured.
Baseline: the original method, `rouge_scorer._score_lcs` per pair inside a new
`multiprocessing.Pool(num_cpus)` per candidate. Its per-pair time is measured on a sample of pairs
and its pool start-up cost on a few pools; the estimate for a batch is
candidates x (pool_size x per_pair / workers + pool_start_up), i.e. perfect scaling over the
workers, which favours the baseline. One candidate is also run the original way against the 5K
pool to check the estimate. The instructions are the distinct ones of the bundled alpaca_data.json
and seed_tasks.jsonl, each with two words swapped in from the others, which makes 50K distinct
instructions of realistic length and vocabulary.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import time
from functools import partial

import numpy as np

from alpaca_lib.core.rouge import RougeLPool
from benchutil import bundled_instructions, with_machine


def _make_instructions(base: list[str], n: int, rng: random.Random) -> list[str]:
    # Realistic length and vocabulary, distinct texts: a real instruction with two words swapped in from another.
    vocab = [w for t in base for w in t.split()]
    out, seen = [], set()
    while len(out) < n:
        words = rng.choice(base).split()
        for _ in range(2):
            words[rng.randrange(len(words))] = rng.choice(vocab)
        text = " ".join(words)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def _noop(_):
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=100, help="candidates per batch (5 requests x ~20 items)")
    ap.add_argument("--workers", type=int, default=2, help="cores for both methods (the original's num_cpus)")
    ap.add_argument("--pair_sample", type=int, default=20_000, help="pairs timed for the baseline's per-pair cost")
    args = ap.parse_args()

    from rouge_score import rouge_scorer

    rng = random.Random(0)
    base = bundled_instructions()
    texts = _make_instructions(base, 50_000 + args.candidates, rng)
    pool_texts, candidates = texts[:50_000], texts[50_000:]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    tok = scorer._tokenizer.tokenize
    print(f"data: 50,000 instructions made from the {len(base)} distinct ones of the bundled alpaca_data.json and "
          f"seed_tasks.jsonl (mean {np.mean([len(t.split()) for t in pool_texts]):.1f} words); "
          f"{args.candidates} candidates per batch; {args.workers} workers")

    # Baseline per-pair cost, on a sample of pairs.
    cand_tokens = [tok(c) for c in candidates]
    sample = [(rng.choice(cand_tokens), tok(rng.choice(pool_texts))) for _ in range(args.pair_sample)]
    t = time.perf_counter()
    for a, b in sample:
        rouge_scorer._score_lcs(a, b)
    per_pair = (time.perf_counter() - t) / len(sample)
    # Baseline pool start-up: the original made a new Pool(num_cpus) for every candidate.
    t = time.perf_counter()
    for _ in range(3):
        with multiprocessing.Pool(args.workers) as p:
            p.map(_noop, range(args.workers))
    startup = (time.perf_counter() - t) / 3
    print(f"original method: {per_pair * 1e6:.1f} us a pair (sample of {len(sample)}), {startup * 1e3:.0f} ms per Pool start-up")

    results = {}
    for size in (5_000, 50_000):
        pool = RougeLPool(pool_texts[:size], workers=args.workers)
        pool.filter_batch(candidates[:2])  # warm-up (imports, thread pool)
        pool = RougeLPool(pool_texts[:size], workers=args.workers)
        t = time.perf_counter()
        decisions = pool.filter_batch(candidates)
        fast = time.perf_counter() - t
        baseline = args.candidates * (size * per_pair / args.workers + startup)
        results[size] = (fast, baseline)
        kept = sum(d.kept for d in decisions)
        print(
            f"pool {size:>6,}: fast {fast:8.3f} s   original (est.) {baseline:9.1f} s   ratio {baseline / fast:8.0f}x"
            f"   ({kept}/{args.candidates} kept)"
        )

    # Check the estimate: one candidate the original way against the 5K pool.
    pool_tokens = [tok(x) for x in pool_texts[:5_000]]
    t = time.perf_counter()
    with multiprocessing.Pool(args.workers) as p:
        scores = p.map(partial(rouge_scorer._score_lcs, cand_tokens[0]), pool_tokens)
    measured = time.perf_counter() - t
    _ = np.mean([s.fmeasure for s in scores])
    print(f"check: one candidate the original way vs 5K: measured {measured:.2f} s, model {5_000 * per_pair / args.workers + startup:.2f} s")
    (fast5, base5), (fast50, base50) = results[5_000], results[50_000]
    print(with_machine(f"RESULT ratio_5k={base5 / fast5:.0f} ratio_50k={base50 / fast50:.0f} fast_5k_s={fast5:.3f} "
          f"fast_50k_s={fast50:.3f} original_5k_s={base5:.1f} original_50k_s={base50:.1f} "
          f"per_pair_us={per_pair * 1e6:.1f} pool_startup_ms={startup * 1e3:.0f}"))


if __name__ == "__main__":
    main()
