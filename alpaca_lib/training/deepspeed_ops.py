"""DeepSpeed's CPU ops: compiled once, on first use, and said so, not minutes of silence.

    python -m alpaca_lib.training.deepspeed_ops        # compile them now (the tests' setup does: bash scripts/setup_env.sh --dev)

Without a GPU, DeepSpeed compiles C++ ops the first time a run needs them (the CPU Adam of
configs/default_offload_opt_param.json's offload, and its shared-memory collectives), into torch's extension cache
(~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR), where later runs find them. Nothing else in this project
needs them, so setting up for the demo does not compile them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# The ops a CPU run of DeepSpeed compiles, as (DeepSpeed's builder class, the extension's name).
CPU_OPS = (("CPUAdamBuilder", "cpu_adam"), ("ShareMemCommBuilder", "deepspeed_shm_comm"))
# Measured on 2 cores (docs/performance.md): what the line that announces the compilation says.
COMPILE_MINUTES = "2 to 4"


def missing_cpu_ops() -> list[str]:
    """The names of the CPU ops not yet compiled into torch's extension cache."""
    from torch.utils.cpp_extension import (
        _get_build_directory,  # where torch's load() builds and looks (pinned by a test)
    )

    return [name for _, name in CPU_OPS
            if not (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").is_file()]


def announce_first_compile() -> None:
    """Prints one line, on the first process (RANK 0), when a DeepSpeed run on CPU is about to compile its ops."""
    missing = missing_cpu_ops()
    if missing and os.environ.get("RANK", "0") == "0":
        print(f"train.py: DeepSpeed compiles its CPU ops ({', '.join(missing)}) on first use, once: about "
              f"{COMPILE_MINUTES} minutes on 2 cores before the first step (`python -m alpaca_lib.training.deepspeed_ops` "
              "compiles them ahead).", file=sys.stderr, flush=True)


def compile_cpu_ops() -> float:
    """Compiles the CPU ops that are missing; returns the seconds it took."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator  # deepspeed takes seconds to import: only when it is used

    start = time.monotonic()
    for builder, _ in CPU_OPS:
        get_accelerator().create_op_builder(builder).load(verbose=False)
    return time.monotonic() - start


def main() -> None:
    """Compiles the ops, or lets torch's loader check that the compiled ones fit this environment (it compiles
    them again for another virtual environment or torch: their build commands name them)."""
    missing = missing_cpu_ops()
    if missing:
        print(f"compiling DeepSpeed's CPU ops ({', '.join(missing)}), once: about {COMPILE_MINUTES} minutes on 2 cores ...",
              flush=True)
    else:
        print("DeepSpeed's CPU ops are compiled; checking that they were compiled for this environment ...", flush=True)
    print(f"done in {compile_cpu_ops():.0f} s")


if __name__ == "__main__":
    main()
