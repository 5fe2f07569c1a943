"""A hub id with no network to the Hugging Face hub: one error line within seconds, not a minute of retries.

    bash scripts/test.sh tests/test_hub_unreachable.py

No test needs a network: the subprocess's HF_ENDPOINT (read by huggingface_hub at import) names a closed
port on loopback, and HF_HUB_OFFLINE is unset for it, as on a machine whose network is down.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alpaca_lib.core import preflight
from alpaca_lib.core.errors import UsageError
from conftest import REPO_ROOT

TRAIN = str(REPO_ROOT / "train.py")
# Before the fix these runs spent 57 s (a model id) and 34-40 s (a dataset id) retrying, plus the start.
WITHIN_S = 45


def _closed_port() -> int:
    with socket.socket() as s:  # bound and closed again: nothing listens there, a connection is refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_network(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}
    return {**env, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HUB_CACHE": str(tmp_path / "hub"),
            "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "PYTHONUNBUFFERED": "1"}


def _train_refused(tmp_path: Path, args: list[str]) -> tuple[str, str]:
    """Runs train.py without a network; asserts one error line, status 1, no output folder, and the time."""
    (tmp_path / "data.json").write_text(json.dumps([{"instruction": "x", "input": "", "output": "y"}]))
    env = _no_network(tmp_path)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, TRAIN, *args, "--output_dir", "out"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    elapsed = time.monotonic() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert elapsed < WITHIN_S, f"refused after {elapsed:.1f} s"
    assert not (tmp_path / "out").exists()
    return lines[0], env["HF_ENDPOINT"]


def test_a_model_id_without_network_fails_fast_in_one_line(tmp_path):
    line, endpoint = _train_refused(tmp_path, ["--model_name_or_path", "someone/llama-nope", "--data_path", "data.json"])
    assert line == (
        f"error: --model_name_or_path someone/llama-nope: not a local folder, and no network to the Hugging Face hub "
        f"({endpoint}: ConnectError: [Errno 111] Connection refused), with no cached copy of config.json. Fix: "
        "download it first where there is a network (`hf download someone/llama-nope`) and pass that folder; for a "
        "model already downloaded, set HF_HUB_OFFLINE=1.")


def test_a_dataset_id_without_network_fails_fast_in_one_line(tmp_path):
    model = tmp_path / "model"  # passes the path checks; the data is refused before any model loads
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    line, endpoint = _train_refused(tmp_path, ["--model_name_or_path", "model", "--data_path", "someone/data-nope"])
    assert line == (
        f"error: someone/data-nope: no such local file or folder, and no network to the Hugging Face hub ({endpoint}: "
        f"ConnectError: [Errno 111] Connection refused) to load the dataset 'someone/data-nope' from, nor a copy in "
        f"the local cache ({tmp_path / 'datasets'}). Fix: download it first where there is a network (python -c "
        "\"import datasets; datasets.load_dataset('someone/data-nope')\") or pass a local file; for a dataset "
        "already in the cache, set HF_HUB_OFFLINE=1.")


def test_a_cached_model_id_is_not_refused_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    snapshot = tmp_path / "models--someone--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--someone--cached" / "refs").mkdir()
    (tmp_path / "models--someone--cached" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(preflight, "_offline", lambda: False)
    monkeypatch.setattr(preflight, "hub_unreachable", lambda: "http://127.0.0.1:1: ConnectError")
    preflight.check_model_source("someone/cached", cache_dir=str(tmp_path))  # transformers loads it from the cache
    with pytest.raises(UsageError, match=r"^--model_name_or_path someone/other: not a local folder, and no network"):
        preflight.check_model_source("someone/other", cache_dir=str(tmp_path))


def test_the_hub_is_not_probed_offline_for_a_local_folder_or_a_cached_id(tmp_path, monkeypatch, tiny_llama_dir):
    """The probe costs up to seconds: a run that cannot need the network never pays it."""
    snapshot = tmp_path / "models--someone--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--someone--cached" / "refs").mkdir()
    (tmp_path / "models--someone--cached" / "refs" / "main").write_text("abc123")

    def probe():
        raise AssertionError("the hub was probed")

    monkeypatch.setattr(preflight, "hub_unreachable", probe)
    monkeypatch.setattr(preflight, "_offline", lambda: False)
    preflight.check_model_source(str(tiny_llama_dir))
    preflight.check_model_source("someone/cached", cache_dir=str(tmp_path))
    monkeypatch.setattr(preflight, "_offline", lambda: True)
    with pytest.raises(UsageError, match=r"^--model_name_or_path someone/other: not a local folder, and the "
                                         r"Hugging Face hub is offline"):
        preflight.check_model_source("someone/other", cache_dir=str(tmp_path))
