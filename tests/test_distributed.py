"""train.py under `torchrun --nproc_per_node=2` on CPU: DDP, FSDP2 and DeepSpeed ZeRO-3.

    bash scripts/test.sh tests/test_distributed.py

DDP runs train.py as users run it. (FSDP's `offload` variant needs an accelerator, since FSDP2's CPU
offload moves parameters between CPU and GPU; its flag mapping is checked in test_train.py.) FSDP and DeepSpeed go through tests/cpu_dist_launch.py, which lets
accelerate use them without a GPU (train.py itself is unpatched). Each run trains on 4 examples with a
global batch of 4, so its first loss must equal the single-process run's, and its saved model must
reload and generate.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from alpaca_lib.saving import STAGING_NAME
from conftest import REPO_ROOT, run_script, write_alpaca_subset

# --standalone lets torchrun pick a free port itself: no race between choosing a port and binding it.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _train_args(model_dir, data, out, cache, per_device, extra=()):
    return [
        "--model_name_or_path", str(model_dir), "--data_path", str(data), "--output_dir", str(out),
        "--num_train_epochs", "2", "--per_device_train_batch_size", str(per_device), "--learning_rate", "1e-3",
        "--logging_steps", "1", "--save_strategy", "no", "--evaluation_strategy", "no", "--report_to", "none",
        "--model_max_length", "192", "--preprocessing_cache_dir", str(cache), "--seed", "0", "--disable_tqdm", "True",
        *extra,
    ]


def _logged_losses(log: str):
    return [float(x) for x in re.findall(r"'loss': '([0-9.]+)'", log)]


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data = write_alpaca_subset(root / "four.json", slice(4))
    out = root / "single"
    log = run_script([sys.executable, str(REPO_ROOT / "train.py"),
                *_train_args(tiny_llama_dir, data, out, root / "cache", per_device=4)], cwd=root)
    return root, data, _logged_losses(log)


def _check_saved_model(out: Path, vocab: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert not (out / STAGING_NAME).exists()  # the staged final save was moved into place
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == vocab == len(tok)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    prompt = tok("### Instruction:\nSay hi.\n\n### Response:", return_tensors="pt")
    gen = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert gen.shape[1] == prompt.input_ids.shape[1] + 5


@pytest.mark.parametrize(
    "mode, launcher, extra, expected_type",
    [
        ("ddp", [], [], "DDP (MULTI_CPU)"),
        ("fsdp", [str(REPO_ROOT / "tests" / "cpu_dist_launch.py")],
         ["--fsdp", "full_shard auto_wrap", "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer"], "FSDP"),
        ("deepspeed", [str(REPO_ROOT / "tests" / "cpu_dist_launch.py")],
         ["--deepspeed", str(REPO_ROOT / "configs" / "default_offload_opt_param.json")], "DeepSpeed"),
    ],
)
def test_torchrun_two_processes(setup, tiny_llama_dir, mode, launcher, extra, expected_type):
    root, data, single_losses = setup
    out = root / mode
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node=2", *launcher,
           str(REPO_ROOT / "train.py"), *_train_args(tiny_llama_dir, data, out, root / "cache", 2, extra)]
    log = run_script(cmd, cwd=root)
    assert f"training with {expected_type} over 2 processes on cpu" in log
    losses = _logged_losses(log)
    assert len(losses) == len(single_losses) == 2
    # Same 4 examples, same initial weights: the first step's loss is the single-process one.
    assert losses[0] == pytest.approx(single_losses[0], abs=2e-3)
    if mode != "deepspeed":  # DeepSpeed brings its own AdamW and scheduler, so step 2 differs slightly.
        assert losses[1] == pytest.approx(single_losses[1], abs=2e-3)
    vocab = json.loads((tiny_llama_dir / "config.json").read_text())["vocab_size"] + 1
    _check_saved_model(out, vocab)


def test_lora_under_torchrun_matches_one_process(setup, tiny_llama_dir):
    root, data, _ = setup
    lora = ["--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0"]
    single = run_script([sys.executable, str(REPO_ROOT / "train.py"),
                   *_train_args(tiny_llama_dir, data, root / "lora-single", root / "cache", 4, lora)], cwd=root)
    out = root / "lora-ddp"
    log = run_script([*TORCHRUN, "--standalone", "--nproc_per_node=2", str(REPO_ROOT / "train.py"),
                *_train_args(tiny_llama_dir, data, out, root / "cache", 2, lora)], cwd=root)
    assert "training with DDP (MULTI_CPU) over 2 processes on cpu" in log
    single_losses, losses = _logged_losses(single), _logged_losses(log)
    assert len(losses) == len(single_losses) == 2
    # Both steps: the adapters get the same averaged gradient as in one process. (At a high learning rate
    # Adam's first step turns float noise in near-zero gradients into full-size steps, so 1e-3 as above.)
    assert losses == pytest.approx(single_losses, abs=2e-3)
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    vocab = json.loads((tiny_llama_dir / "config.json").read_text())["vocab_size"] + 1
    _check_saved_model(out, vocab)


@pytest.mark.parametrize(
    "mode, launcher, extra",
    [
        ("ddp", [], []),
        ("deepspeed", [str(REPO_ROOT / "tests" / "cpu_dist_launch.py")],
         ["--deepspeed", str(REPO_ROOT / "configs" / "default_offload_opt_param.json")]),
    ],
)
def test_packing_under_torchrun_matches_one_process(setup, tiny_llama_dir, mode, launcher, extra):
    root, data, _ = setup
    # These 4 examples fill rows of 192 tokens one each: 4 rows, 2 steps of 2 rows.
    packing = ["--packing", "True", "--max_steps", "2"]
    single = run_script([sys.executable, str(REPO_ROOT / "train.py"),
                   *_train_args(tiny_llama_dir, data, root / f"packed-single-{mode}", root / "cache", 2, packing)],
                  cwd=root)
    out = root / f"packed-{mode}"
    log = run_script([*TORCHRUN, "--standalone", "--nproc_per_node=2", *launcher, str(REPO_ROOT / "train.py"),
                *_train_args(tiny_llama_dir, data, out, root / "cache", 1, [*packing, *extra])], cwd=root)
    assert "packing: 4 examples into 4 rows" in log
    # ZeRO-3 shards the weights before any forward can run, so there the forward's signature decides.
    assert "packing: the LM head runs on the loss-bearing positions only" in log
    single_losses, losses = _logged_losses(single), _logged_losses(log)
    assert len(losses) == len(single_losses) == 2
    # A global batch of the same 2 rows: the same loss, summed over the same tokens, on step 1.
    assert losses[0] == pytest.approx(single_losses[0], abs=2e-3)
    vocab = json.loads((tiny_llama_dir / "config.json").read_text())["vocab_size"] + 1
    _check_saved_model(out, vocab)
