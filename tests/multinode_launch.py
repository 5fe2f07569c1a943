"""Runs a script as a torchrun worker of tests/test_multinode.py: cpu_dist_launch.py's patches, and a slow cache build.

    SLOW_CACHE_BUILD_S=2 torchrun --nnodes 2 ... tests/multinode_launch.py train.py ...

Test-only. FSDP and DeepSpeed are let run on CPU as in tests/cpu_dist_launch.py. With SLOW_CACHE_BUILD_S set, building
a preprocessing cache entry takes that many seconds more, so that two nodes reaching the same missing entry together
overlap for certain: the second must wait for the first's entry (and read it), not build its own.
"""

from __future__ import annotations

import os
import time

from cpu_dist_launch import run_as_main


def _slow_cache_build(seconds: float) -> None:
    import alpaca_lib.data.cache as cache  # after sys.path[0] is the script's folder: its alpaca_lib

    original = cache._encode_to_cache

    def encode_to_cache(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    cache._encode_to_cache = encode_to_cache


if __name__ == "__main__":
    slow = os.environ.get("SLOW_CACHE_BUILD_S")
    run_as_main(before=(lambda: _slow_cache_build(float(slow))) if slow else None)
