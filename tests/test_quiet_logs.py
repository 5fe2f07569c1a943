"""Quiet, honest logs: bash scripts/test.sh tests/test_quiet_logs.py

Each noise the project silenced or reworded, shown gone at its source (and still there without the fix,
where the third-party package is installed).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from alpaca_lib.generation.accounting import format_summary, is_loopback

PROBE = "Setting accelerator to CPU"


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_deepspeed_import_is_silent_on_a_cpu_machine():
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env["CUDA_VISIBLE_DEVICES"] = ""

    def run(code):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout + proc.stderr

    assert PROBE in run("import deepspeed")  # the warning the probe prevents
    # The probe decides when DeepSpeed is imported: until then, not even torch is.
    quiet = run("import os, sys; from alpaca_lib.core.quiet import quiet_deepspeed_probe; quiet_deepspeed_probe(); "
                "print('torch' in sys.modules, os.environ.get('DS_ACCELERATOR')); import deepspeed; "
                "print(os.environ['DS_ACCELERATOR'])")
    assert PROBE not in quiet and quiet.splitlines()[-2:] == ["False None", "cpu"]


@pytest.mark.parametrize("url, local", [
    ("http://127.0.0.1:8000/v1", True), ("http://localhost:1234/v1", True), ("http://[::1]:80/v1", True),
    ("https://api.openai.com/v1", False), ("http://10.0.0.5:8000/v1", False), (None, False),
])
def test_loopback_servers_are_told_apart(url, local):
    assert is_loopback(url) is local


def test_a_local_server_costs_nothing_instead_of_unknown():
    summary = {"requests": 2, "retries": 0, "prompts": 2, "raw_items": 4, "kept": 3, "kept_ratio": 0.75,
               "discarded": {"too_similar": 1}, "prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30,
               "cost_usd": None, "unpriced_models": ["m"]}
    assert format_summary(summary, "http://127.0.0.1:8000/v1").splitlines()[-1] == (
        "cost: none (a server on this machine, http://127.0.0.1:8000/v1)")
    assert format_summary(summary, "https://api.example.com/v1").splitlines()[-1] == (
        "cost: unknown (no price for m; pass --price_table)")


@pytest.mark.parametrize("fsdp", ["full_shard auto_wrap", "full_shard auto_wrap offload", "shard_grad_op"])
def test_the_originals_fsdp_string_is_fsdp2_settings_without_the_deprecation(fsdp, caplog):
    """--fsdp "full_shard auto_wrap" gives the plugin arguments transformers' own (deprecated) reading gives."""
    import logging
    import warnings

    import transformers

    from alpaca_lib.training.args import parse_flags

    cls = {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # --fsdp on a machine without a GPU
        with caplog.at_level(logging.WARNING, logger="transformers.training_args"):
            _, _, ours = parse_flags(["--output_dir", "out", "--fsdp", fsdp,
                                      "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer"])
        assert "deprecated" not in caplog.text
        theirs = transformers.TrainingArguments(output_dir="out", fsdp=fsdp, fsdp_config=dict(cls), use_cpu=True)
    assert ours.fsdp is True and ours.fsdp_config == theirs.fsdp_config
    assert ours.fsdp_plugin_args == theirs.fsdp_plugin_args


def test_fsdp_strings_it_does_not_know_are_left_to_transformers():
    from alpaca_lib.training.args import fsdp_string_to_config

    assert fsdp_string_to_config("hybrid_shard auto_wrap", None) == ("hybrid_shard auto_wrap", None)
    assert fsdp_string_to_config("full_shard", {"version": 1}) == ("full_shard", {"version": 1})
    assert fsdp_string_to_config("full_shard offload", '{"min_num_params": 5}') == (
        True, {"min_num_params": 5, "reshard_after_forward": True, "cpu_offload": True})
