"""Precision by what the hardware runs natively: `--bf16 auto`, the warning for an emulated one, `--dtype auto`.

    bash scripts/test.sh tests/test_precision.py

The machine's answer is faked where a test needs the other kind of processor (`fake_cpu`, `fake_cuda`); the real
probe runs too, with oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA), which makes bf16 emulated on every x86 CPU.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from alpaca_lib.core import precision
from alpaca_lib.evaluation.outputs import resolve_dtype
from conftest import REPO_ROOT, run_train_expecting_error

NATIVE = {"float32": 1.0, "bfloat16": 0.4, "float16": 25.0}  # a CPU with AMX-BF16, as timed by the probe
EMULATED = {"float32": 1.0, "bfloat16": 58.0, "float16": 25.0}  # AVX2 only


@pytest.fixture
def fake_cpu(monkeypatch):
    """fake_cpu(timings, features): the probe's timings and torch's CPU flags as on another processor."""

    def fake(timings: dict, features: str) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(precision, "_cpu_timings", lambda: timings)
        monkeypatch.setattr(precision, "cpu_features", lambda: features)
        monkeypatch.setattr(precision, "cpu_name", lambda: "Test CPU 9000")
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # the phrase would name the cap

    return fake


@pytest.fixture
def fake_cuda(monkeypatch):
    def fake(bf16: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)

    return fake


def test_a_cpu_with_fast_bf16_products_runs_bf16_natively(fake_cpu):
    fake_cpu(NATIVE, "AMX")
    d = precision.decide("bfloat16")
    assert (d.device, d.native, d.slowdown) == ("cpu", True, 0.4)
    assert d.evidence == f"({precision.describe_cpu()}: a bf16 matrix product takes 0.4x the time of a float32 one)"
    assert d.hardware.startswith("Test CPU 9000, ") and d.hardware.endswith(" cores, AMX")
    assert precision.auto_dtype() == "bfloat16"
    assert precision.emulation_warning("bfloat16", "--bf16 True", "fix") is None


def test_a_cpu_with_slow_bf16_products_or_without_the_instructions_emulates_it(fake_cpu):
    fake_cpu(EMULATED, "AVX2 only")
    d = precision.decide("bfloat16")
    assert (d.native, d.slowdown) == (False, 58.0)
    assert precision.auto_dtype() == "float32"
    # The flags rule it out even where a (noisy) timing would pass: no AVX512-BF16 or AMX, no native bf16.
    fake_cpu(NATIVE, "AVX-512")
    assert precision.decide("bfloat16").native is False
    # The flags allow it, but oneDNN is capped (or a hypervisor hides the instructions): the timing decides.
    fake_cpu(EMULATED, "AVX512-BF16")
    assert precision.decide("bfloat16").native is False
    assert precision.decide("float16").native is False  # 25x: emulated whatever the flags


def test_a_cuda_gpu_says_itself_whether_it_has_bf16(fake_cuda):
    fake_cuda(bf16=True)
    d = precision.decide("bfloat16")
    assert (d.device, d.native, d.slowdown, d.evidence) == ("cuda", True, None, "(Test GPU)")
    assert precision.auto_dtype() == "bfloat16"
    fake_cuda(bf16=False)  # a V100 or T4: fp16 is its half precision
    assert precision.decide("bfloat16").native is False and precision.decide("float16").native is True
    assert precision.auto_dtype() == "float16"
    assert precision.emulation_warning("bfloat16", "--bf16 True", "fix").startswith(
        "warning: --bf16 True on a CUDA that emulates bf16 (Test GPU)")


def test_the_real_probe_finds_bf16_emulated_when_onednn_is_capped_at_avx2():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("ONEDNN_MAX_CPU_ISA=AVX2 caps x86 CPUs only")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-m", "alpaca_lib.core.precision"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith("bfloat16: emulated on cpu (") and lines[-1] == "auto: float32", out
    slowdown = float(lines[0].split("takes ")[1].split("x the time")[0])
    assert slowdown > precision.NATIVE_MAX_SLOWDOWN


def test_torchs_cpu_flag_probes_are_there():
    """cpu_features reads these private torch functions: they must exist and answer a bool."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported", "_is_avx512_supported", "_is_avx2_supported"):
        assert isinstance(getattr(torch.cpu, name)(), bool), name


# ---- train.py ----


def _refused_run_lines(tmp_path, *flags) -> list[str]:
    """train.py's precision lines for FLAGS, in a run refused for its empty data before any model loads."""
    data = tmp_path / "data.json"
    data.write_text("[]")
    return _precision_lines(run_train_expecting_error(tmp_path, ["--data_path", str(data), *flags]))


def _precision_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("train.py: ") and ("bf16" in line or "fp16" in line)]


def test_bf16_auto_trains_in_bf16_where_native_and_says_why(tmp_path, fake_cpu):
    import train

    fake_cpu(NATIVE, "AMX")
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    stderr = run_train_expecting_error(tmp_path, ["--data_path", str(data), "--bf16", "auto",
                                                  "--learning_rate", "-1"])
    assert _precision_lines(stderr) == [
        f"train.py: --bf16 auto: bf16 mixed precision, since this CPU runs bf16 natively ({precision.describe_cpu()}: "
        "a bf16 matrix product takes 0.4x the time of a float32 one)."]
    *_, args = train.parse_flags(["--output_dir", str(tmp_path / "o"), "--bf16", "auto"])
    assert args.bf16 is True and args.use_cpu is True


def test_bf16_auto_trains_in_float32_where_emulated(tmp_path, fake_cpu):
    import train

    fake_cpu(EMULATED, "AVX2 only")
    *_, args = train.parse_flags(["--output_dir", str(tmp_path / "o"), "--bf16", "auto"])
    assert args.bf16 is False
    *_, args = train.parse_flags(["--output_dir", str(tmp_path / "o"), "--bf16", "auto", "--fp16", "True"])
    assert (args.bf16, args.fp16) == (False, True)


def test_bf16_auto_on_a_gpu_follows_the_gpu(tmp_path, fake_cuda, capsys):
    from alpaca_lib.training.args import TrainingArguments

    fake_cuda(bf16=True)
    args = TrainingArguments.__new__(TrainingArguments)
    args.bf16, args.fp16, args.use_cpu = "auto", False, False
    args._choose_precision("cuda")
    assert args.bf16 is True
    assert capsys.readouterr().err == "train.py: --bf16 auto: bf16 mixed precision, since this CUDA runs bf16 natively (Test GPU).\n"
    fake_cuda(bf16=False)
    args.bf16 = "auto"
    args._choose_precision("cuda")
    assert args.bf16 is False


def test_explicit_bf16_on_an_emulating_cpu_runs_as_asked_with_one_warning_line(tmp_path, fake_cpu):
    import train

    fake_cpu(EMULATED, "AVX2 only")
    data = tmp_path / "data.json"
    data.write_text("[]")
    stderr = run_train_expecting_error(tmp_path, ["--data_path", str(data), "--bf16", "True"])
    assert _precision_lines(stderr) == [
        f"train.py: warning: --bf16 True on a CPU that emulates bf16 ({precision.describe_cpu()}: a bf16 matrix product "
        "takes 58x the time of a float32 one), so the run takes many times as long as in float32; --bf16 auto (or "
        "False) trains in float32 here."]
    assert stderr.index("warning: --bf16 True") < stderr.index("error: ")  # before anything else is checked
    *_, args = train.parse_flags(["--output_dir", str(tmp_path / "o"), "--bf16"])  # a bare --bf16 is True
    assert args.bf16 is True
    fake_cpu(NATIVE, "AMX")  # native: nothing to say
    assert _refused_run_lines(tmp_path, "--bf16", "True") == []


def test_fp16_on_a_cpu_is_said_to_be_unused(tmp_path, fake_cpu):
    fake_cpu(NATIVE, "AMX")
    assert _refused_run_lines(tmp_path, "--fp16", "True") == [
        "train.py: warning: --fp16 True on a CPU is not used: accelerate runs fp16 mixed precision on GPUs only, so "
        "this run trains in float32, as with --fp16 False; --bf16 auto trains in bf16 where this CPU runs it natively."]


def test_a_bf16_value_that_is_no_choice_is_one_error_line(tmp_path):
    data = tmp_path / "data.json"
    data.write_text("[]")
    stderr = run_train_expecting_error(tmp_path, ["--data_path", str(data), "--bf16", "maybe"])
    assert stderr.strip().splitlines()[-1] == "error: --bf16 maybe is not a choice: give True, False or auto."


# ---- models that answer: eval_model.py outputs|chat, the in-process judge, alpaca_lib.evaluation.infer ----


def test_dtype_auto_of_a_local_model_follows_the_same_rule(fake_cpu, fake_cuda, capsys):
    fake_cpu(NATIVE, "AMX")
    assert resolve_dtype("auto") == "bfloat16"
    fake_cpu(EMULATED, "AVX2 only")
    assert resolve_dtype("auto") == "float32"
    assert resolve_dtype("float32") == "float32" and capsys.readouterr().err == ""
    assert resolve_dtype("bfloat16", flag="--judge_dtype") == "bfloat16"
    assert resolve_dtype("bfloat16", flag="--judge_dtype") == "bfloat16"  # said once a process
    assert capsys.readouterr().err == (
        f"warning: --judge_dtype bfloat16 on a CPU that emulates bf16 ({precision.describe_cpu()}: a bf16 matrix "
        "product takes 58x the time of a float32 one), so the run takes many times as long as in float32; "
        "--judge_dtype auto runs float32 here.\n")
    fake_cuda(bf16=False)
    assert resolve_dtype("auto") == "float16"


# ---- DeepSpeed's CPU ops: compiled by the tests' setup, announced on a user's first DeepSpeed run ----


def test_deepspeeds_cpu_ops_are_looked_for_where_torch_builds_them(tmp_path, monkeypatch, capsys):
    from alpaca_lib.training import deepspeed_ops

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("RANK", "0")
    assert deepspeed_ops.missing_cpu_ops() == ["cpu_adam", "deepspeed_shm_comm"]
    deepspeed_ops.announce_first_compile()
    assert capsys.readouterr().err == (
        "train.py: DeepSpeed compiles its CPU ops (cpu_adam, deepspeed_shm_comm) on first use, once: about 2 to 4 "
        "minutes on 2 cores before the first step (`python -m alpaca_lib.training.deepspeed_ops` compiles them ahead).\n")
    monkeypatch.setenv("RANK", "1")
    deepspeed_ops.announce_first_compile()
    assert capsys.readouterr().err == ""  # the first process speaks for all
    (tmp_path / "cpu_adam").mkdir(exist_ok=True)  # torch makes the folders as it looks
    (tmp_path / "cpu_adam" / "cpu_adam.so").write_bytes(b"")
    assert deepspeed_ops.missing_cpu_ops() == ["deepspeed_shm_comm"]
    (tmp_path / "deepspeed_shm_comm").mkdir(exist_ok=True)
    (tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").write_bytes(b"")
    monkeypatch.setenv("RANK", "0")
    deepspeed_ops.announce_first_compile()
    assert deepspeed_ops.missing_cpu_ops() == [] and capsys.readouterr().err == ""
