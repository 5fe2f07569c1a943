"""The GPU check's CPU rehearsal: `bash bench/gpu_check.sh --dry-run` runs every step and writes every figure.

    bash scripts/test.sh -m slow tests/test_gpu_check.py      # the rehearsal: about a minute on 2 CPU cores

The GPU run itself needs a device (README, "Performance"); this keeps the script that spends those
minutes working: each mode trains a tiny LLaMA for a few steps through train.py, the FSDP mode runs
FSDP2 over gloo (tests/cpu_dist_launch.py) under torchrun and saves a model that is reloaded and compared,
and the generation step times batched against one-at-a-time answers and runs `eval_model.py outputs`.
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import REPO_ROOT, run_script

MODES = {"faithful", "group_by_length", "packed", "packed_sdpa", "lora", "gradient_checkpointing", "fsdp"}
NUMERIC = ("seconds", "tokens", "computed_tokens", "loss_tokens", "tokens_per_s", "loss_tokens_per_s",
           "peak_mem_gb", "mfu", "mfu_vs_measured_matmul", "model_tflops")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.slow  # a minute of training runs: with the slow tests, which CI runs too
def test_gpu_check_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    log = run_script(["bash", str(REPO_ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                     cwd=tmp_path, timeout=600)  # about 5 minutes when other work shares the 2 cores
    assert "RESULT " in log and "failed=none" in log, log[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu" and report["errors"] == {}
    assert _positive(report["params"]) and _positive(report["peak_tflops"])

    modes = report["modes"]
    assert set(modes) == MODES
    for name, m in modes.items():
        for key in NUMERIC:
            assert _positive(m[key]), (name, key, m[key])
        assert (m["steps"], m["warmup_steps"]) == (2, 1), name  # the dry run's fixed steps, warm-up left out
        assert m["loss_tokens"] < m["tokens"] <= m["computed_tokens"], name
        assert math.isclose(m["mfu"], 6 * report["params"] * m["tokens"] / m["seconds"] / (report["peak_tflops"] * 1e12))
    # Padded batches compute padding; packed rows (one per step here) hold none.
    assert modes["faithful"]["computed_tokens"] > modes["faithful"]["tokens"]
    assert modes["packed"]["computed_tokens"] == modes["packed"]["tokens"]
    # train.py's own choices, from its log: the packed mode measures what a user's run gets on this device.
    assert modes["packed"]["attention"] == "per_example (cpu: sdpa once per example)"
    assert modes["packed_sdpa"]["attention"] == "sdpa (--packed_attention sdpa)"
    assert {m["attention"] for name, m in modes.items() if not name.startswith("packed")} == {"not packed"}
    assert all(m["kernel_forwards"] == {"varlen": 0, "flash": 0} for m in modes.values())  # no GPU kernel on CPU

    fsdp = modes["fsdp"]
    assert fsdp["distributed_type"] == "FSDP"  # sharded for real (over gloo), not the DDP fallback
    trip = fsdp["roundtrip"]
    assert "model.safetensors" in trip["files"] and trip["keys_not_in_both"] == []
    assert trip["max_abs_diff"] == 0.0  # the saved model is exactly the trained one
    assert 0 < trip["changed_vs_base"] <= trip["tensors"]  # and training moved the weights

    gen = report["generation"]
    assert (gen["n"], gen["batch_size"], gen["max_new_tokens"]) == (4, 4, 8)
    assert _positive(gen["ratio"]) and _positive(gen["tokens"])
    # float32 on CPU: batching (left padding) changes the logits by rounding only, so greedy answers agree.
    assert gen["identical"] == 4
    assert report["eval_model_outputs"]["records"] == 50  # eval_instructions.json, answered through the CLI
    assert set(report["targets"]) == {"packed_mfu", "packed_vs_faithful", "met"}
    assert (out / "gpu_check.log").read_text().count("=====") == len(MODES) + 2


def test_gpu_check_refuses_a_machine_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    # Without --dry-run, the prerequisite check stops it before any model is built.
    log = run_script(["bash", str(REPO_ROOT / "bench" / "gpu_check.sh"), "--out", str(tmp_path / "out")],
                     cwd=tmp_path, expect=2, timeout=120)
    assert "gpu_check.sh: prerequisites missing:" in log
    assert "no CUDA device is visible to torch (use --dry-run to rehearse on CPU)" in log
    assert not (tmp_path / "out").exists()
