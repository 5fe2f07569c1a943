"""train.py under `torchrun --nproc_per_node=2` on CPU: DDP, FSDP2 and DeepSpeed ZeRO-3.

    bash scripts/test.sh tests/test_distributed.py

DDP runs train.py as users run it. (FSDP's `offload` variant needs an accelerator, since FSDP2's CPU
offload moves parameters between CPU and GPU; its flag mapping is checked in test_train.py.) FSDP and DeepSpeed go through tests/cpu_dist_launch.py, which lets
accelerate use them without a GPU (train.py itself is unpatched). Each run trains 3 steps on 4 examples
with a global batch of 4, so each of its losses must equal the single-process run's, its saved weights
must have moved from the base, and its saved model must reload and generate.

DeepSpeed brings its own scheduler (configs/: WarmupDecayLR), which runs its first two steps at a learning
rate of 0 (it warms up over at least 2 steps, from 0): its runs train 4 steps, the first three at the
starting weights. The 4 examples then give the same gradient three times, so Adam's bias-corrected moments
after step 3 are those of a first step: ZeRO's step 3 is the single process's step 1, and its loss at step 4
must be the single process's at step 2.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from alpaca_lib.training.saving import STAGING_NAME
from conftest import REPO_ROOT, run_script, write_alpaca_subset

# On one worker, one after another: each test is two training processes already, and two DeepSpeed jobs at once
# would build (and lock) the same CPU extensions.
pytestmark = pytest.mark.xdist_group("torchrun")

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


STEPS = ["--max_steps", "3"]
DEEPSPEED = ["--deepspeed", str(REPO_ROOT / "configs" / "default_offload_opt_param.json"), "--max_steps", "4"]


def _logged_losses(log: str):
    return [float(x) for x in re.findall(r"'loss': '([0-9.]+)'", log)]


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data = write_alpaca_subset(root / "four.json", slice(4))
    return root, data


@pytest.fixture(scope="module")
def single_losses(setup, tiny_llama_dir, warm):
    """The losses of one process training on all 4 examples per step with `extra` flags; each made once (in the
    warm Python, tests/warm_python.py)."""
    root, data = setup
    done = {}

    def get(*extra: str) -> list[float]:
        if extra not in done:
            out = root / f"single-{len(done)}"
            log = warm.run_script([sys.executable, str(REPO_ROOT / "train.py"),
                                   *_train_args(tiny_llama_dir, data, out, root / "cache", 4, [*STEPS, *extra])], root)
            done[extra] = _logged_losses(log)
        return done[extra]

    return get


def _assert_same_losses(losses: list[float], single: list[float], deepspeed: bool) -> None:
    assert len(single) == 3 and abs(single[2] - single[1]) > 0.02  # the reference moves at every step
    if deepspeed:  # steps 1 and 2 at a learning rate of 0, step 3 as a first step (see the module docstring)
        assert losses == pytest.approx([single[0]] * 3 + [single[1]], abs=2e-3)
        return
    # Same 4 examples per step, same initial weights, same learning rates: the same losses, step by step.
    assert losses == pytest.approx(single, abs=2e-3)


def _assert_weights_moved(out: Path, base: Path) -> None:
    """Every weight of the saved model differs from the base's (the embeddings' original rows included)."""
    from safetensors.torch import load_file

    saved, before = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    assert saved.keys() == before.keys()
    for name, weight in before.items():
        moved = saved[name][: weight.shape[0]] - weight
        assert moved.abs().max() > 1e-4, f"{name} did not move from the base"


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
        ("deepspeed", [str(REPO_ROOT / "tests" / "cpu_dist_launch.py")], DEEPSPEED, "DeepSpeed"),
    ],
)
def test_torchrun_two_processes(setup, single_losses, tiny_llama_dir, mode, launcher, extra, expected_type):
    root, data = setup
    out = root / mode
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node=2", *launcher,
           str(REPO_ROOT / "train.py"), *_train_args(tiny_llama_dir, data, out, root / "cache", 2, [*STEPS, *extra])]
    log = run_script(cmd, cwd=root)
    assert f"training with {expected_type} over 2 processes on cpu" in log
    deepspeed = mode == "deepspeed"
    _assert_same_losses(_logged_losses(log), single_losses(), deepspeed)
    _assert_weights_moved(out, tiny_llama_dir)
    vocab = json.loads((tiny_llama_dir / "config.json").read_text())["vocab_size"] + 1
    _check_saved_model(out, vocab)


def test_lora_under_torchrun_matches_one_process(setup, tiny_llama_dir, warm):
    root, data = setup
    lora = ["--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0"]
    single = warm.run_script([sys.executable, str(REPO_ROOT / "train.py"),
                              *_train_args(tiny_llama_dir, data, root / "lora-single", root / "cache", 4, lora)], root)
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
        # DeepSpeed once in the default run (test_torchrun_two_processes); packed under it with the slow tests.
        pytest.param("deepspeed", [str(REPO_ROOT / "tests" / "cpu_dist_launch.py")], DEEPSPEED, marks=pytest.mark.slow),
    ],
)
def test_packing_under_torchrun_matches_one_process(setup, single_losses, tiny_llama_dir, mode, launcher, extra):
    root, data = setup
    # These 4 examples fill rows of 192 tokens one each: 4 rows, all of them in each step's global batch.
    packing = ["--packing", "True"]
    out = root / f"packed-{mode}"
    log = run_script([*TORCHRUN, "--standalone", "--nproc_per_node=2", *launcher, str(REPO_ROOT / "train.py"),
                      *_train_args(tiny_llama_dir, data, out, root / "cache", 2, [*STEPS, *packing, *extra])], cwd=root)
    assert "packing: 4 examples into 4 rows" in log
    # ZeRO-3 shards the weights before any forward can run, so there the forward's signature decides.
    assert "packing: the LM head runs on the loss-bearing positions only" in log
    deepspeed = mode == "deepspeed"
    # The same rows: the same losses, summed over the same tokens, as one process packing them.
    _assert_same_losses(_logged_losses(log), single_losses(*packing), deepspeed)
    _assert_weights_moved(out, tiny_llama_dir)
    vocab = json.loads((tiny_llama_dir / "config.json").read_text())["vocab_size"] + 1
    _check_saved_model(out, vocab)
