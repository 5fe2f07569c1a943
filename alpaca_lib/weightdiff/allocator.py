"""glibc's malloc tuned for streaming large tensors; process-wide, so only a command-line entry point calls it.

    def main(argv=None):
        big_allocations_use_mmap()   # weight_diff.py, before its command runs
        run_fire(COMMANDS, "weight_diff.py", argv)

By default glibc raises its mmap threshold after the first large free (up to 32 MiB), after which tensors of a
few MiB come from the heap, which fragments and keeps growing while tensors of overlapping lifetimes stream
through. A fixed threshold (M_MMAP_THRESHOLD, see mallopt(3)) serves them with mmap, so a freed tensor goes
back to the OS at once. `mallopt` changes the whole process and cannot be undone (glibc has no call that reads
the threshold back or restores the adaptive one), which is why library functions never call this: a test,
a bench or a notebook that calls `make_diff` keeps its own allocator. docs/weight_diff.md has the measurement.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt(3)'s parameter number, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20  # allocations of 1 MiB and more are served by mmap


def big_allocations_use_mmap() -> None:
    """Makes glibc serve allocations of 1 MiB and more with mmap for the rest of the process (see above).

    A no-op where glibc is not available.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass
