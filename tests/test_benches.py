"""Every bench in bench/ still runs: each at its smallest size, to its RESULT line (slow: a few minutes in all).

    bash scripts/test.sh tests/test_benches.py -m slow

The benches' figures are the project's performance claims (README, docs/performance.md); a bench that no longer
runs, as bench_generate_52k.py once stopped at its very end, would leave them unchecked. Each is run as a user runs
it, `python bench/NAME.py ...`, from the repository, and must exit 0 with a last line `RESULT k=v ...` holding
exactly the keys its docs quote, and the machine it ran on (`benchutil.machine_fields`). bench/gpu_check.py's
rehearsal is tests/test_gpu_check.py's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from alpaca_lib.core.precision import decide
from conftest import REPO_ROOT

MACHINE = ["cpu", "cores", "cpu_features", "cpu_bf16"]

# (bench, its smallest arguments, the keys of its RESULT line before the machine's)
BENCHES = [
    ("bench_generate_52k", ["--target", "300", "--request_batch_size", "5"],
     ["kept", "wall_s", "peak_rss_mb", "rouge_s", "journal_s", "regen_write_s", "requests_s", "not_requests_s", "cpu_s",
      "rouge_cpu_s", "lcs_cpu_s", "journal_cpu_s", "regen_write_cpu_s", "candidates", "requests", "regen_mb",
      "journal_mb"]),
    ("bench_rouge", ["--candidates", "10", "--pair_sample", "500"],
     ["ratio_5k", "ratio_50k", "fast_5k_s", "fast_50k_s", "original_5k_s", "original_50k_s", "per_pair_us",
      "pool_startup_ms"]),
    ("bench_data_report", ["--n", "300", "--tokenizer", "tiny"],
     ["records", "total_s", "read_s", "tokenize_s", "rouge_s", "build_cpu_s", "write_s", "total_x_read"]),
    ("bench_preprocess", ["--n", "300", "--tokenizer", "tiny"],
     ["examples", "tokens", "original_s", "batched_s", "cached_s", "batched_x", "cached_x"]),
    ("bench_chat_preprocess", ["--n", "40", "--tokenizer", "tiny"],
     ["records", "alpaca_s", "chat_s", "chat_x", "multi_turn_s", "per_turn_ms", "alpaca_loss_tokens",
      "chat_loss_tokens"]),
    ("bench_preprocess_1m", ["--sizes", "300,600"],
     ["records_small", "records_large", "small_s", "large_s", "small_rss_mb", "large_rss_mb", "data_x", "rss_x",
      "rss_above_start_x", "large_hit_s"]),
    ("bench_outputs", ["--n", "4", "--batch_size", "2", "--max_new_tokens", "4"],
     ["n", "batch_size", "single_s", "batched_s", "ratio", "identical", "tokens"]),
    ("bench_train_modes", ["--examples", "8", "--skip_lora"],
     ["faithful_tok_s", "group_by_length_x", "packed_x", "packed_all_logits_x"]),
    ("bench_trl", ["--quick", "--examples", "8"],
     ["train_faithful_tok_s", "trl_padded_tok_s", "train_packed_tok_s", "trl_packed_tok_s", "train_faithful_loss",
      "trl_padded_loss", "train_packed_loss", "trl_packed_loss", "padded_x", "packed_x", "padded_cpu_x",
      "packed_cpu_x", "boundary_tokens", "masks_agree"]),
    ("bench_weight_diff", ["--hidden", "64", "--layers", "2", "--shard_mb", "1"],
     ["params_m", "whole_s", "stream_s", "verify_s", "whole_mb", "stream_mb", "verify_mb", "rss_ratio", "speedup",
      "identical"]),
    ("bench_test_suite", ["--no-suite", "--repeat", "1"], ["launch_fresh_s", "launch_warm_s", "launch_speedup"]),
    ("bench_cpu_peak", ["--steps", "1", "--warmup", "1"], None),  # its keys depend on the CPU: see below
]


def _cpu_peak_keys() -> list[str]:
    keys = ["fp32_peak_gflops"]
    native = decide("bfloat16", "cpu").native
    if native:
        keys.append("bf16_peak_gflops")
    for name in ("fp32", "bf16") if native else ("fp32",):
        keys += [f"{name}_train_gflops", f"{name}_of_peak", f"{name}_step_s"]
    return keys + (["bf16_train_speedup"] if native else [])


@pytest.mark.slow
@pytest.mark.parametrize("bench,args,keys", BENCHES, ids=[b[0] for b in BENCHES])
def test_the_bench_runs_to_its_result_line(bench, args, keys, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / f"{bench}.py"), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(result) == 1 and proc.stdout.rstrip().endswith(result[0]), out[-4000:]
    fields = dict(pair.split("=", 1) for pair in result[0].split()[1:])
    expected = (keys if keys is not None else _cpu_peak_keys()) + MACHINE
    assert list(fields) == expected, result[0]
    assert all(value for value in fields.values()), result[0]
