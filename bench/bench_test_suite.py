"""The default test suite's time against its 8-minute limit, and what a training run's launch costs in it.

    .venv/bin/python bench/bench_test_suite.py                 # the launch figures, then the whole suite (~5 min)
    .venv/bin/python bench/bench_test_suite.py --no-suite      # the launch figures only (~1 min)

Two figures, both measured in this run:

- launch: `python train.py --help` in a new interpreter, against the same command in the tests' warm Python
  (tests/warm_python.py: train.py's imports done once, one forked process per run), `--repeat` times each,
  interleaved, median kept. Most of the suite's training runs start the second way.
- suite: `bash scripts/test.sh` (the README's test command: a worker per core, slow tests left out), its wall
  time and pytest's own, against the 480 s the default run must stay under on 2 cores of either kind of CPU.

Run it on a quiet machine: the suite's time doubles when something else holds the cores.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import with_machine

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITE_LIMIT_S = 480.0


def _launch_times(repeat: int) -> tuple[float, float]:
    """Median seconds of `train.py --help` in a new interpreter and in the warm Python."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from warm_python import WarmPython

    cmd = [sys.executable, str(REPO_ROOT / "train.py"), "--help"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        warm = WarmPython.start(Path(tmp) / "socket", log=Path(tmp) / "server.log")
        try:
            fresh, warmed = [], []
            for _ in range(repeat):
                start = time.perf_counter()
                subprocess.run(cmd, capture_output=True, check=True, cwd=tmp, env=env)
                fresh.append(time.perf_counter() - start)
                start = time.perf_counter()
                assert warm.run(cmd, Path(tmp), env=env).returncode == 0
                warmed.append(time.perf_counter() - start)
        finally:
            warm.stop()
    return statistics.median(fresh), statistics.median(warmed)


def _suite_time() -> tuple[float, float, str]:
    """Wall seconds of `bash scripts/test.sh`, pytest's own seconds, and its summary line."""
    start = time.perf_counter()
    proc = subprocess.run(["bash", "scripts/test.sh", "-q", "-p", "no:cacheprovider"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    summary = next((line.strip("= ") for line in reversed(proc.stdout.splitlines()) if " in " in line), "")
    if proc.returncode != 0:
        sys.exit(f"the suite failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return wall, float(re.search(r" in ([0-9.]+)s", summary).group(1)), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="launches of each kind (median kept)")
    parser.add_argument("--no-suite", action="store_true", help="measure the launch only")
    args = parser.parse_args()

    fresh, warmed = _launch_times(args.repeat)
    print(f"train.py --help: {fresh:.2f} s in a new interpreter, {warmed:.3f} s in the warm Python "
          f"({fresh / warmed:.0f}x), median of {args.repeat}")
    result = f"launch_fresh_s={fresh:.2f} launch_warm_s={warmed:.3f} launch_speedup={fresh / warmed:.0f}"
    if not args.no_suite:
        wall, pytest_s, summary = _suite_time()
        print(f"bash scripts/test.sh: {wall:.0f} s wall ({summary}); the target is under {SUITE_LIMIT_S:.0f} s "
              f"on 2 cores; this machine has {os.cpu_count()}")
        result += (f" suite_wall_s={wall:.0f} suite_pytest_s={pytest_s:.0f} limit_s={SUITE_LIMIT_S:.0f} "
                   f"suite_to_limit={wall / SUITE_LIMIT_S:.2f}")
    print(with_machine(f"RESULT {result}"))


if __name__ == "__main__":
    main()
