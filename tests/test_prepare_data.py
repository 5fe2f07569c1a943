"""prepare_data.py: `convert` writes any source as Alpaca JSON; `report` counts what training will make of it.

    bash scripts/test.sh tests/test_prepare_data.py
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alpaca_lib.data.report import build_report
from alpaca_lib.data.tokenizing import tokenize_records
from conftest import REPO_ROOT, run_script
from utils import format_prompt

DOLLY = "instruction=instruction,input=context,output=response"

# A hand-made file whose counts are known (at 128 tokens with the tiny tokenizer):
HAND_MADE = [
    {"instruction": "Write a poem about the sea.", "input": "", "output": "Waves."},
    {"instruction": "Write a poem about the sea please.", "input": "", "output": "Tides."},  # near dup of 0 (0.92)
    {"instruction": "Write a poem about the sea.", "input": "", "output": "Another answer."},  # exact dup of 0
    {"instruction": "Write a poem about the sea.", "input": "In winter.", "output": "Cold waves."},  # near dup only
    {"instruction": "Translate to French.", "input": "Good morning", "output": ""},  # empty output
    {"instruction": "List three fruits.", "input": "", "output": "  \n "},  # whitespace-only output
    {"instruction": "Describe a long journey.", "input": "", "output": "step " * 200},  # response cut at 128
    {"instruction": "Summarize this text.", "input": "word " * 300, "output": "Short."},  # prompt fills 128
    {"instruction": "Résumé en français.", "input": "", "output": "Ça va très bien."},  # 5 non-ASCII characters
    {"instruction": "Compute two plus two.", "input": "", "output": "Four."},
]


def test_report_counts_on_a_hand_made_file(tokenizer):
    report = build_report(HAND_MADE, tokenizer, 128)
    assert {k: report[k] for k in ("records", "with_input", "prompt_fills_max_length", "response_truncated",
                                   "boundary_merges", "exact_duplicate_instructions", "near_duplicate_instructions",
                                   "empty_outputs", "blank_instructions")} == {
        "records": 10, "with_input": 3, "prompt_fills_max_length": 1, "response_truncated": 1, "boundary_merges": 0,
        "exact_duplicate_instructions": 1, "near_duplicate_instructions": 3, "empty_outputs": 2,
        "blank_instructions": 0,
    }
    chars = sum(len(r[k]) for r in HAND_MADE for k in ("instruction", "input", "output"))
    assert report["non_ascii_share"] == round(5 / chars, 6)
    # Token lengths: each record tokenized on its own, untruncated.
    prompt = np.array([len(tokenizer(format_prompt(r))["input_ids"]) for r in HAND_MADE])
    total = np.array([len(tokenizer(format_prompt(r) + r["output"] + tokenizer.eos_token)["input_ids"]) for r in HAND_MADE])
    for part, lengths in (("prompt", prompt), ("response", total - prompt), ("total", total)):
        summary = report["tokens"][part]
        assert summary["max"] == lengths.max() and summary["mean"] == round(lengths.mean(), 2)
        assert [summary[f"p{p}"] for p in (50, 90, 95, 99)] == [round(float(np.percentile(lengths, p)), 2)
                                                             for p in (50, 90, 95, 99)]
    # The same counts as training's own at that length.
    stats = tokenize_records(HAND_MADE, tokenizer, 128).stats
    assert (stats["dropped_no_response"], stats["dropped_indices"], stats["response_truncated"]) == (1, [7], 1)


def test_report_cli_writes_json_and_png(tmp_path, tiny_llama_dir):
    data = tmp_path / "hand.json"
    data.write_text(json.dumps(HAND_MADE), encoding="utf-8")
    log = run_script([sys.executable, str(REPO_ROOT / "prepare_data.py"), "report", "--data_path", str(data),
                      "--tokenizer", str(tiny_llama_dir), "--model_max_length", "128",
                      "--output_dir", str(tmp_path / "r")], tmp_path)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert (report["records"], report["near_duplicate_instructions"], report["response_truncated"]) == (10, 3, 1)
    assert "near-duplicate instructions (ROUGE-L > 0.7 against an earlier kept one): 3 (30.0%)" in log
    assert "prompt fills model_max_length (dropped in training): 1 (10.0%)" in log
    assert (tmp_path / "r" / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["lengths.png", "report.json"]


DOLLY_RECORDS = [
    {"instruction": "When did it open?", "context": "The library opened in 1901.", "response": "In 1901.",
     "category": "closed_qa"},
    {"instruction": "Tell me a long story.", "context": "", "response": "and then " * 8, "category": "creative"},
    {"instruction": "Name a planet.", "context": "", "response": "Mars.", "category": "open_qa"},
    {"instruction": "Résume", "context": "«été»", "response": "Chaud. 🎉", "category": "summarization"},
]


def test_convert_maps_columns_and_filters_long_records(tmp_path):
    src = tmp_path / "dolly.parquet"
    pq.write_table(pa.Table.from_pylist(DOLLY_RECORDS), src)
    out = tmp_path / "alpaca.json"
    log = run_script([sys.executable, str(REPO_ROOT / "prepare_data.py"), "convert", "--data_path", str(src),
                      "--data_columns", DOLLY, "--max_words", "12", "--output_path", str(out)], tmp_path)
    assert f"{out}: wrote 3 of 4 records (1 longer than 12 words left out)" in log
    expected = [{"instruction": r["instruction"], "input": r["context"], "output": r["response"]}
                for i, r in enumerate(DOLLY_RECORDS) if i != 1]  # record 1: 5 + 16 words; record 0: 11
    assert out.read_text(encoding="utf-8") == json.dumps(expected, indent=4, ensure_ascii=False)
    from prepare_data import convert

    counts = convert(str(src), str(tmp_path / "all.json"), data_columns=DOLLY)
    assert counts == {"records": 4, "written": 4, "dropped_long": 0}
    assert len(json.loads((tmp_path / "all.json").read_text(encoding="utf-8"))) == 4


def test_convert_errors_leave_no_output(tmp_path):
    src = tmp_path / "dolly.parquet"
    pq.write_table(pa.Table.from_pylist(DOLLY_RECORDS), src)
    out = tmp_path / "alpaca.json"
    log = run_script([sys.executable, str(REPO_ROOT / "prepare_data.py"), "convert", "--data_path", str(src),
                      "--output_path", str(out)], tmp_path, expect=1)
    assert f"error: {src}: no column 'output' (output); the columns are ['instruction', 'context', 'response', " \
           "'category']" in log
    assert "Traceback" not in log and list(tmp_path.iterdir()) == [src]
    from alpaca_lib.data.records import DataError
    from prepare_data import convert

    with pytest.raises(DataError, match=r"no record left to write \(4 read, all longer than --max_words 1\)"):
        convert(str(src), str(out), data_columns=DOLLY, max_words=1)
    assert list(tmp_path.iterdir()) == [src]


def test_convert_on_a_full_disk_is_one_error_line_and_keeps_the_old_file(tmp_path):
    """The file size limit (RLIMIT_FSIZE, as tests/test_writers.py simulates a full disk) stops the write halfway."""
    import resource
    import signal
    import subprocess

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process at the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "alpaca.json"
    out.write_text("[]", encoding="utf-8")  # an earlier output, to be kept
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "prepare_data.py"), "convert", "--data_path",
                           str(REPO_ROOT / "alpaca_data.json"), "--output_path", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"error: no space left on device while writing {out} (file size limit reached); {out} is as it was (it is "
        "replaced only once written whole). Free some space (or choose a folder on a disk with more room) and run "
        "the same command again."]
    assert out.read_text(encoding="utf-8") == "[]" and sorted(p.name for p in tmp_path.iterdir()) == ["alpaca.json"]
