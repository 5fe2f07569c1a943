"""Helpers shared by the benchmark scripts in this folder."""

from __future__ import annotations

import resource
from pathlib import Path


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
