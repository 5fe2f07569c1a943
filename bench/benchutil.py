"""Helpers shared by the benchmark scripts in this folder: peak memory, and the data they run on.

Every bench runs on data the repository ships (alpaca_data.json, seed_tasks.jsonl) or on data
synthesized from it here, deterministically, so a fresh clone reproduces the README's figures.
"""

from __future__ import annotations

import json
import os
import random
import resource
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ALPACA_DATA = REPO_ROOT / "alpaca_data.json"  # 254 records, about 40% with an input
SEED_TASKS = REPO_ROOT / "seed_tasks.jsonl"  # 175 seed tasks of the self-instruct generator


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB.

    VmHWM is per address space, so it starts afresh at exec; ru_maxrss can carry the parent's peak
    over into a child on Linux, which would blur a comparison between child processes.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def machine_fields() -> dict:
    """The machine a figure was measured on, as RESULT keys: the CPU's model, its cores, what its matrix products
    run on (AMX, AVX512-BF16, AVX2 only, ...) and whether bf16 is native there; and the GPU, if there is one."""
    import torch

    from alpaca_lib.core import precision

    fields = {"cpu": "_".join(precision.cpu_name().split()), "cores": len(os.sched_getaffinity(0)),
              "cpu_features": precision.cpu_features(),
              "cpu_bf16": "native" if precision.decide("bfloat16", "cpu").native else "emulated"}
    if torch.cuda.is_available():
        fields["gpu"] = "_".join(torch.cuda.get_device_name().split())
    return fields


def with_machine(result: str) -> str:
    """A bench's `RESULT k=v ...` line with `machine_fields()` added, so that every figure names its machine."""
    return result + "".join(f" {k}={v}" for k, v in machine_fields().items())


def bundled_records() -> list[dict]:
    """The records of the bundled alpaca_data.json, each with 'instruction', 'input' and 'output'."""
    from alpaca_lib.data.json_reader import load_records

    return [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in load_records(ALPACA_DATA)]


def bundled_instructions() -> list[str]:
    """The distinct instructions of alpaca_data.json and seed_tasks.jsonl, sorted."""
    with open(SEED_TASKS, encoding="utf-8") as f:
        seeds = [json.loads(line)["instruction"] for line in f if line.strip()]
    return sorted({r["instruction"] for r in bundled_records()} | set(seeds))


def synthesize_records(n: int, seed: int = 0) -> list[dict]:
    """`n` Alpaca records of realistic length, recombined from the bundled alpaca_data.json.

    Each takes the instruction of one real record and the output of another; 40% also take the input
    of a third (the 52K release has an input in about 40% of its records). Field lengths thus follow
    the real records' distributions, and the same `n` and `seed` always give the same records.

    Args:
        n: how many records to make.
        seed: seeds the choice of records.
    Returns:
        A list of {"instruction", "input", "output"} dicts.
    """
    base = bundled_records()
    with_input = [r for r in base if r["input"]]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(base), rng.choice(base)
        record = {"instruction": a["instruction"], "input": "", "output": b["output"]}
        if rng.random() < 0.4:
            record["input"] = rng.choice(with_input)["input"]
        out.append(record)
    return out


def time_every_trainer() -> dict:
    """For a bench's child process: every transformers Trainer made from now on records the wall and CPU
    seconds of its train() alone (not loading, not saving) in the returned dict, as "wall" and "cpu"."""
    import transformers

    clock: dict = {}

    class Clock(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["wall"], clock["cpu"] = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kwargs):
            clock["wall"], clock["cpu"] = time.perf_counter() - clock["wall"], time.process_time() - clock["cpu"]

    original_init = transformers.Trainer.__init__

    def timed_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(Clock())

    transformers.Trainer.__init__ = timed_init  # subclasses (train.py's, TRL's) included
    return clock
