"""Speed of `prepare_data.py report` on 52K records with distinct instructions (the ROUGE-L pool's worst case).

    .venv/bin/python bench/bench_data_report.py [--n 52002] [--tokenizer tiny|smollm2]

The records take outputs and inputs from the bundled alpaca_data.json (`benchutil`'s recipe), but each
instruction is a fresh sequence of 6 to 20 words drawn from the bundled instructions' vocabulary, so
almost none is a near duplicate and the ROUGE-L pool grows to nearly every record, as it would on the
52K release. Times each phase of `alpaca_lib.data.report.build_report` (tokenizing, ROUGE-L) and the
writing of report.json and the PNG, against the time to read the file in the same run.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from benchutil import bundled_records, peak_rss_mb, with_machine


def synthesize(n: int, seed: int = 0) -> list[dict]:
    base = bundled_records()
    vocab = sorted({w for r in base for w in r["instruction"].split()})
    with_input = [r for r in base if r["input"]]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choices(vocab, k=rng.randint(6, 20))
        record = {"instruction": " ".join(words).capitalize() + ".", "input": "", "output": rng.choice(base)["output"]}
        if rng.random() < 0.4:
            record["input"] = rng.choice(with_input)["input"]
        out.append(record)
    return out


def main() -> None:
    from bench_preprocess import load_tokenizer

    from alpaca_lib.data.report import build_report, write_report
    from alpaca_lib.data.sources import open_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=52002)
    parser.add_argument("--tokenizer", choices=["tiny", "smollm2"], default="smollm2")
    parser.add_argument("--max_length", type=int, default=512)
    args = parser.parse_args()
    tokenizer, name = load_tokenizer(args.tokenizer, args.max_length)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.json"
        path.write_text(json.dumps(synthesize(args.n)), encoding="utf-8")
        t0 = time.perf_counter()
        records = open_source(path).records()
        t_read = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        report = build_report(records, tokenizer, args.max_length)
        t_build, cpu_build = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        write_report(report, Path(tmp) / "report")
        t_write = time.perf_counter() - t0
    total = t_read + t_build + t_write
    print(f"data: {args.n} records, {report['near_duplicate_instructions']} near-duplicate instructions; tokenizer: {name}")
    print(f"read the file    : {t_read:6.2f} s  1.00x")
    print(f"tokenize lengths : {report['timings']['tokenize_s']:6.2f} s  {report['timings']['tokenize_s'] / t_read:5.1f}x")
    print(f"ROUGE-L near dups: {report['timings']['rouge_s']:6.2f} s  {report['timings']['rouge_s'] / t_read:5.1f}x")
    print(f"write JSON + PNG : {t_write:6.2f} s")
    print(f"total            : {total:6.2f} s  (peak RSS {peak_rss_mb():.0f} MB)")
    print(f"CPU time of the tokenizing and ROUGE-L phases: {cpu_build:.1f} s over {t_build:.1f} s of wall time "
          f"(other jobs on the machine show as wall time above CPU time)")
    print(with_machine(f"RESULT records={args.n} total_s={total:.1f} read_s={t_read:.2f} tokenize_s={report['timings']['tokenize_s']:.1f} "
          f"rouge_s={report['timings']['rouge_s']:.1f} build_cpu_s={cpu_build:.1f} write_s={t_write:.2f} total_x_read={total / t_read:.0f}"))


if __name__ == "__main__":
    main()
