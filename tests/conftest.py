"""Shared fixtures. Run the suite with `bash scripts/test.sh` (CPU, no network)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random LLaMA (2 layers, hidden 64) and a LLaMA-style tokenizer with no pad token."""
    from alpaca_lib.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", vocab_size=1000)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir, model_max_length=512, padding_side="right")


def run_train_expecting_error(tmp_path: Path, args: list[str]) -> str:
    """Runs `train.py ARGS --output_dir tmp/out` (model: a path that does not exist) and returns stderr.

    Asserts that it failed and wrote no output folder: the error came before any model was loaded.
    """
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), "--model_name_or_path", str(tmp_path / "no-such-model"),
         "--output_dir", str(tmp_path / "out"), *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert not (tmp_path / "out").exists()
    return proc.stderr
