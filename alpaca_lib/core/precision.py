"""Which floating-point formats this machine computes at full speed, decided in one place.

    python -m alpaca_lib.core.precision        # this machine: its processor, and bf16 native or emulated, measured

`train.py --bf16 auto`, `eval_model.py --dtype auto` (outputs, chat, the in-process judge) and `alpaca_lib.evaluation.infer`
ask `decide()`; a half precision asked for explicitly on a device that only emulates it gets `emulation_warning()`
before the model loads.

A CUDA GPU says itself whether it has bf16 (compute capability 8.0 and later). A CPU runs bf16 matrix products at
full speed only with AVX512-BF16 or AMX (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later);
elsewhere torch converts element by element, tens of times slower than float32 (docs/performance.md). Its flags
are not the whole answer (a hypervisor can hide them, ONEDNN_MAX_CPU_ISA caps the kernels, ARM CPUs differ), so
the CPU's answer is measured: one small product in each format, timed, once per process (a tenth of a second), decides where the flags
allow bf16; where they rule it out, it is emulated.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from dataclasses import dataclass
from typing import Optional

# A half-precision matrix product counts as native when it takes at most this many times a float32 one: where it
# is native it is faster than float32 (about 0.5x with AVX512-BF16, far less with AMX), where emulated 20-70x slower.
NATIVE_MAX_SLOWDOWN = 3.0
_PROBE_SIZE = 256  # a product of two 256 x 256 matrices: 34 MFLOP, 10-40 ms where emulated


@dataclass(frozen=True)
class Decision:
    """Whether one format runs natively on one device, and the evidence, for a log line."""

    dtype: str  # "bfloat16" or "float16"
    device: str  # "cuda", "cpu", or another torch device type
    native: bool
    slowdown: Optional[float]  # the measured time of a product in `dtype` over float32's (CPU only)
    hardware: str  # "AMD EPYC 7B13, 2 cores, AVX2 only" or "NVIDIA H100 80GB HBM3"

    @property
    def evidence(self) -> str:
        """The hardware and, on a CPU, the measurement: "(AMD EPYC, 2 cores, AVX2 only: a bf16 matrix product
        takes 58x the time of a float32 one)"."""
        if self.slowdown is None:
            return f"({self.hardware})"
        return f"({self.hardware}: a {_SHORT[self.dtype]} matrix product takes {_ratio(self.slowdown)} the time of a float32 one)"


_SHORT = {"bfloat16": "bf16", "float16": "fp16"}


def _ratio(x: float) -> str:
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x"


def cpu_name() -> str:
    """The processor's model name as the OS reports it ("AMD EPYC 7B13", "Intel(R) Xeon(R) Platinum 8488C")."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Model\t", "Hardware")):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_features() -> str:
    """The matrix-product features torch finds on this CPU: "AMX", "AVX512-BF16", "AVX-512", "AVX2 only", or
    the architecture's name off x86."""
    import torch  # torch only when a precision is decided (the commands' --help and flag checks skip it)

    probes = [("_is_amx_tile_supported", "AMX"), ("_is_avx512_bf16_supported", "AVX512-BF16"),
              ("_is_avx512_supported", "AVX-512"), ("_is_avx2_supported", "AVX2 only")]
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return platform.machine()
    for name, label in probes:
        check = getattr(torch.cpu, name, None)
        if check is not None and check():
            return label
    return "no AVX2"


def describe_cpu() -> str:
    """One phrase for a figure's machine: "AMD EPYC 7B13, 2 cores, AVX2 only" (and ", oneDNN capped at AVX2" where
    ONEDNN_MAX_CPU_ISA says so)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA")  # oneDNN's kernels limited to an older instruction set
    return f"{cpu_name()}, {cores} cores, {cpu_features()}" + (f", oneDNN capped at {capped}" if capped else "")


_TIMED = ("float32", "bfloat16", "float16")


@functools.lru_cache(maxsize=None)
def _cpu_timings() -> dict:
    """The least CPU time of five `_PROBE_SIZE` matrix products in each format, interleaved, after one untimed.

    Timed on one thread, in that thread's CPU time: what other processes do with the cores does not change it
    (wall-clock timings under load were seen to turn the answer round), and the formats are compared alike.
    """
    import torch  # as in cpu_features

    g = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(_PROBE_SIZE, _PROBE_SIZE, generator=g), torch.randn(_PROBE_SIZE, _PROBE_SIZE, generator=g)
    pairs = {dtype: (a32.to(getattr(torch, dtype)), b32.to(getattr(torch, dtype))) for dtype in _TIMED}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = dict.fromkeys(_TIMED, float("inf"))
    try:
        for i in range(6):
            for dtype, (a, b) in pairs.items():
                t0 = time.thread_time()
                torch.mm(a, b)
                if i:
                    best[dtype] = min(best[dtype], time.thread_time() - t0)
    finally:
        torch.set_num_threads(threads)
    return best


def cpu_slowdown(dtype: str) -> float:
    """How many times longer a `dtype` matrix product takes than a float32 one on this CPU (measured once a process)."""
    t = _cpu_timings()
    return t[dtype] / max(t["float32"], 1e-9)


def _cpu_lacks_half_kernels(dtype: str) -> bool:
    """True where the x86 CPU has none of the instructions oneDNN's `dtype` kernels need, so emulation is certain."""
    features = cpu_features()
    if dtype == "bfloat16":
        return features in ("AVX-512", "AVX2 only", "no AVX2")
    return False


def decide(dtype: str = "bfloat16", device: Optional[str] = None) -> Decision:
    """Whether `dtype` ("bfloat16" or "float16") runs natively on `device` (default: CUDA if there is a GPU,
    else the CPU).

    Args:
        dtype: the half precision in question.
        device: a torch device type; "cuda" and "cpu" are decided, others trust torch's `is_bf16_supported`.
    Returns:
        The `Decision`, with the measured slowdown on a CPU.
    """
    import torch  # as in cpu_features

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        native = dtype == "float16" or torch.cuda.is_bf16_supported(including_emulation=False)
        return Decision(dtype, device, native, None, name)
    if device != "cpu":
        backend = getattr(torch, device, None)
        native = dtype == "float16" or bool(getattr(backend, "is_bf16_supported", lambda: False)())
        return Decision(dtype, device, native, None, device)
    slowdown = cpu_slowdown(dtype)
    native = slowdown <= NATIVE_MAX_SLOWDOWN and not _cpu_lacks_half_kernels(dtype)
    return Decision(dtype, device, native, slowdown, describe_cpu())


def auto_dtype(device: Optional[str] = None) -> str:
    """The dtype a model runs in by default (`--dtype auto`): bfloat16 where it is native; on a GPU without it
    float16; on a CPU without it float32."""
    bf16 = decide("bfloat16", device)
    if bf16.native:
        return "bfloat16"
    return "float16" if bf16.device == "cuda" else "float32"


def emulation_warning(dtype: str, flag: str, fix: str, device: Optional[str] = None) -> Optional[str]:
    """The line to print before a model loads when `flag` asks for `dtype` and this device only emulates it;
    None where it is native (or not half precision).

    Args:
        dtype: "bfloat16", "float16" or another dtype name (None is returned for those).
        flag: what the user typed ("--bf16 True", "--dtype bfloat16").
        fix: what to type instead ("--bf16 auto (or False) trains in float32 here").
    """
    if dtype not in _SHORT:
        return None
    d = decide(dtype, device)
    if d.native:
        return None
    return (f"warning: {flag} on a {d.device.upper()} that emulates {_SHORT[dtype]} {d.evidence}, so the run takes "
            f"many times as long as in float32; {fix}.")


def main() -> None:
    """Prints this machine's processor and the bf16 and fp16 decisions (`python -m alpaca_lib.core.precision`)."""
    for dtype in ("bfloat16", "float16"):
        d = decide(dtype)
        print(f"{dtype}: {'native' if d.native else 'emulated'} on {d.device} {d.evidence}")
    print(f"auto: {auto_dtype()}")


if __name__ == "__main__":
    main()
