"""train.py's final save: staged, then moved into output_dir, so a failed save leaves the old files whole.

    bash scripts/test.sh tests/test_saving.py
"""

from __future__ import annotations

import json

import pytest
import transformers

import train
from alpaca_lib.core.fileio import publish
from alpaca_lib.training.saving import STAGING_NAME
from conftest import REPO_ROOT


def test_publish_moves_files_and_drops_stale_weight_shards(tmp_path):
    src, dst = tmp_path / "staging", tmp_path / "out"
    (src / "adapter").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(b"new weights")
    (src / "config.json").write_text("new config")
    (src / "adapter" / "adapter_model.safetensors").write_bytes(b"new adapter")
    (dst / "checkpoint-5").mkdir(parents=True)
    (dst / "checkpoint-5" / "model.safetensors").write_bytes(b"checkpoint")
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json", "config.json", "trainer_state.json"):
        (dst / name).write_text("old")
    publish(src, dst)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        "adapter/adapter_model.safetensors", "checkpoint-5/model.safetensors", "config.json",
        "model.safetensors", "trainer_state.json",
    ]
    assert (dst / "model.safetensors").read_bytes() == b"new weights"
    assert (dst / "config.json").read_text() == "new config"
    assert (dst / "trainer_state.json").read_text() == "old"  # not a weight file: kept
    assert (dst / "checkpoint-5" / "model.safetensors").read_bytes() == b"checkpoint"  # checkpoints untouched
    assert not any(p.is_file() for p in src.rglob("*"))


def _train(model_dir, out, cache, extra=()):
    return train.train([
        "--model_name_or_path", str(model_dir), "--data_path", str(REPO_ROOT / "alpaca_data.json"),
        "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "2",
        "--save_strategy", "no", "--report_to", "none", "--model_max_length", "128",
        "--preprocessing_cache_dir", str(cache), "--seed", "0", "--disable_tqdm", "True", *extra,
    ])


@pytest.mark.parametrize("extra", [[], ["--lora_r", "4"]], ids=["full", "lora"])
def test_a_save_that_fails_midway_leaves_the_previous_model_whole(tiny_llama_dir, tmp_path, monkeypatch, extra):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"previous weights")
    (out / "config.json").write_text('{"previous": true}')
    original = transformers.PreTrainedModel.save_pretrained

    def save_then_fail(self, save_directory, *args, **kwargs):
        original(self, save_directory, *args, **kwargs)  # the weights are written, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save_then_fail)
    with pytest.raises(OSError, match="no space left on device while writing"):
        _train(tiny_llama_dir, out, tmp_path / "cache", extra)
    assert (out / "model.safetensors").read_bytes() == b"previous weights"
    assert json.loads((out / "config.json").read_text()) == {"previous": True}
    assert not (out / STAGING_NAME).exists()
    assert not (out / "adapter").exists()

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", original)
    (out / STAGING_NAME).mkdir()  # as a killed save would leave it
    (out / STAGING_NAME / "junk.bin").write_bytes(b"x")
    _train(tiny_llama_dir, out, tmp_path / "cache", extra)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == json.loads((tiny_llama_dir / "config.json").read_text())["vocab_size"] + 1
    assert not (out / STAGING_NAME).exists()
    assert (out / "tokenizer.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists() == bool(extra)
