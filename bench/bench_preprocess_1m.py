"""Preprocessing at scale: time and peak memory for 52K and 1M records, each in a fresh process.

    .venv/bin/python bench/bench_preprocess_1m.py [--sizes 52002,1000000] [--tokenizer tiny|smollm2]

Synthesizes Alpaca JSON Lines files of realistic records (`benchutil`'s recipe: instruction, input and
output recombined from the bundled alpaca_data.json, written one record at a time), then, for each size,
runs what train.py runs in a child process of its own: the check pass (`open_source(...).check()`) and
the cold preprocessing into the cache (`encode_file`), then a second child that finds the cache. Each
child reports its peak RSS (VmHWM). Data are streamed in batches and the token ids go straight into the
cache file, which is memory-mapped when read, so peak memory should grow far slower than the data: the
last line gives both growth factors against the smallest size measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import REPO_ROOT, bundled_records, peak_rss_mb, with_machine


def write_jsonl(path: Path, n: int, seed: int = 0) -> int:
    """Writes `n` synthesized records (as `benchutil.synthesize_records`) without holding them; returns bytes."""
    base = bundled_records()
    with_input = [r for r in base if r["input"]]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            a, b = rng.choice(base), rng.choice(base)
            record = {"instruction": a["instruction"], "input": "", "output": b["output"]}
            if rng.random() < 0.4:
                record["input"] = rng.choice(with_input)["input"]
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path.stat().st_size


def child(data_path: str, cache_dir: str, tokenizer_kind: str, max_length: int) -> None:
    """One measured run: check pass and preprocessing, as train.py does them; prints a JSON line."""
    from bench_preprocess import load_tokenizer

    from alpaca_lib.data.cache import encode_file
    from alpaca_lib.data.sources import open_source

    tokenizer, _ = load_tokenizer(tokenizer_kind, max_length)
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    source = open_source(data_path).check()
    t_check = time.perf_counter() - t0
    rss_check = peak_rss_mb()
    t0 = time.perf_counter()
    data = encode_file(source, tokenizer, cache_dir=cache_dir)
    t_encode = time.perf_counter() - t0
    print(json.dumps({"records": source.num_records, "kept": data.stats["kept"], "tokens": data.stats["tokens"],
                      "cache": data.stats["cache"], "check_s": t_check, "encode_s": t_encode,
                      "rss_start_mb": rss_before, "rss_after_check_mb": rss_check, "peak_rss_mb": peak_rss_mb()}))


def measure(data_path: Path, cache_dir: Path, tokenizer_kind: str, max_length: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(data_path), "--cache", str(cache_dir),
           "--tokenizer", tokenizer_kind, "--max_length", str(max_length)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "bench"),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="52002,1000000", help="record counts, comma-separated, smallest first")
    parser.add_argument("--tokenizer", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.cache, args.tokenizer, args.max_length)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"alpaca_{n}.jsonl"
            t0 = time.perf_counter()
            size = write_jsonl(path, n)
            t_write = time.perf_counter() - t0
            cache = Path(tmp) / f"cache_{n}"
            cold = measure(path, cache, args.tokenizer, args.max_length)
            warm = measure(path, cache, args.tokenizer, args.max_length)
            assert (cold["cache"], warm["cache"]) == ("miss", "hit") and cold["tokens"] == warm["tokens"]
            cache_mb = sum(p.stat().st_size for p in cache.iterdir()) / 2**20
            rows.append(dict(n=n, data_mb=size / 2**20, cache_mb=cache_mb, cold=cold, warm=warm))
            print(f"{n:>9} records: {size / 2**20:7.1f} MB of JSONL (written in {t_write:.1f} s), "
                  f"{cold['tokens']} tokens, cache entry {cache_mb:.1f} MB")
            print(f"          cold: check {cold['check_s']:6.1f} s + preprocess {cold['encode_s']:6.1f} s, "
                  f"peak RSS {cold['peak_rss_mb']:7.1f} MB (process start {cold['rss_start_mb']:.1f} MB)")
            print(f"          warm: check {warm['check_s']:6.1f} s + cache hit  {warm['encode_s']:6.1f} s, "
                  f"peak RSS {warm['peak_rss_mb']:7.1f} MB")
            path.unlink()  # disk for the next size
    base, big = rows[0], rows[-1]
    data_x = big["data_mb"] / base["data_mb"]
    rss_x = big["cold"]["peak_rss_mb"] / base["cold"]["peak_rss_mb"]
    above_x = ((big["cold"]["peak_rss_mb"] - big["cold"]["rss_start_mb"])
               / max(1e-9, base["cold"]["peak_rss_mb"] - base["cold"]["rss_start_mb"]))
    print(f"data grew {data_x:.1f}x ({base['n']} -> {big['n']} records); peak RSS grew {rss_x:.2f}x "
          f"({above_x:.2f}x above the process's start)")
    print(with_machine(f"RESULT records_small={base['n']} records_large={big['n']} "
          f"small_s={base['cold']['check_s'] + base['cold']['encode_s']:.1f} "
          f"large_s={big['cold']['check_s'] + big['cold']['encode_s']:.1f} "
          f"small_rss_mb={base['cold']['peak_rss_mb']:.0f} large_rss_mb={big['cold']['peak_rss_mb']:.0f} "
          f"data_x={data_x:.1f} rss_x={rss_x:.2f} rss_above_start_x={above_x:.2f} "
          f"large_hit_s={big['warm']['check_s'] + big['warm']['encode_s']:.1f}"))


if __name__ == "__main__":
    main()
