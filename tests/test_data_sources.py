"""Data sources: every format and column mapping gives the records (and token ids) of the Alpaca JSON.

    bash scripts/test.sh tests/test_data_sources.py

The parquet, CSV, save_to_disk and hub-cache inputs are built here from the bundled records; the hub
entry is what `datasets` leaves in its cache after loading a hub dataset once, made locally.
"""

from __future__ import annotations

import codecs
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import train
from alpaca_lib.data import json_reader
from alpaca_lib.data.cache import encode_file
from alpaca_lib.data.json_reader import iter_json_records, load_records
from alpaca_lib.data.records import DataError, RecordMessages, check_record
from alpaca_lib.data.sources import open_source
from alpaca_lib.data.tokenizing import DropOptions, tokenize_records
from conftest import alpaca_records

DOLLY = "instruction=instruction,input=context,output=response"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _reference() -> list[dict]:
    """40 bundled records (some with an input) plus one with non-ASCII text, as Alpaca records."""
    records = alpaca_records()[:40]
    records.append({"instruction": "Résume : « été » 😀", "input": "Ünïcödé ✓ 東京", "output": "Ça va. 🎉"})
    return [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in records]


def _dolly(records: list[dict]) -> list[dict]:
    return [{"instruction": r["instruction"], "context": r["input"], "response": r["output"], "category": "x"}
            for r in records]


def _write_sources(tmp_path: Path, records: list[dict]) -> dict:
    """The same records in every layout; returns {name: (path, columns, split)}."""
    import datasets
    import pandas as pd

    dolly = _dolly(records)
    (tmp_path / "alpaca.json").write_text(json.dumps(records), encoding="utf-8")
    (tmp_path / "dolly.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dolly), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(dolly), tmp_path / "dolly.parquet")
    pd.DataFrame(records).to_csv(tmp_path / "alpaca.csv", index=False)
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "dolly.parquet"), split="train")
    loaded.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": loaded.select(range(3)), "validation": loaded}).save_to_disk(
        str(tmp_path / "saved_dict"))
    return {
        "json": (tmp_path / "alpaca.json", None, "train"),
        "jsonl_mapped": (tmp_path / "dolly.jsonl", DOLLY, "train"),
        "parquet": (tmp_path / "dolly.parquet", DOLLY, "train"),
        "csv": (tmp_path / "alpaca.csv", None, "train"),
        "save_to_disk": (tmp_path / "saved", DOLLY, "train"),
        "save_to_disk_split": (tmp_path / "saved_dict", DOLLY, "validation"),
    }


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """A private datasets cache holding 'acme/dolly-mini' at a fixed revision, as a hub load leaves it."""
    import datasets
    from datasets.packaged_modules.parquet.parquet import Parquet

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    def publish(records: list[dict], revision: str = REVISION) -> str:
        src = tmp_path / f"hub-{revision[:6]}.parquet"
        pq.write_table(pa.Table.from_pylist(_dolly(records)), src)
        builder = Parquet(cache_dir=str(tmp_path / "build"), dataset_name="dolly-mini", hash=revision,
                          data_files={"train": [str(src)]})
        builder.download_and_prepare()
        target = cache / "acme___dolly-mini" / "default" / "0.0.0" / revision
        shutil.rmtree(target.parent, ignore_errors=True)  # one revision in the cache at a time
        target.parent.mkdir(parents=True)
        shutil.move(builder.cache_dir, target)
        return "acme/dolly-mini"

    return publish


def test_every_source_and_mapping_gives_the_json_records_and_token_ids(tmp_path, tokenizer, hub_cache):
    records = _reference()
    layouts = _write_sources(tmp_path, records)
    layouts["hub"] = (hub_cache(records), DOLLY, "train")
    reference = encode_file(tmp_path / "alpaca.json", tokenizer)
    assert (reference.stats["examples"], reference.stats["kept"], reference.stats["dropped_no_response"]) == (41, 40, 1)
    for name, (path, columns, split) in layouts.items():
        source = open_source(path, split, columns).check()
        assert source.num_records == 41, name
        expected = records if name != "json" else json.loads((tmp_path / "alpaca.json").read_text())
        assert [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in source.records()] == expected, name
        encoded = encode_file(source, tokenizer, cache_dir=tmp_path / "cache")
        assert encoded.stats["cache"] == "miss", name
        for array in ("input_ids", "offsets", "source_lens"):
            assert np.array_equal(getattr(encoded, array), getattr(reference, array)), (name, array)
    kinds = {name: open_source(p, s, c).kind for name, (p, c, s) in layouts.items()}
    assert kinds == {"json": "json", "jsonl_mapped": "json", "parquet": "parquet", "csv": "csv",
                     "save_to_disk": "disk", "save_to_disk_split": "disk", "hub": "hub"}


def test_csv_cells_stay_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,input,output\n"Add, then print",,42\n007,"a ""quoted"" input",\n', encoding="utf-8")
    assert open_source(path).records() == [
        {"instruction": "Add, then print", "input": "", "output": "42"},
        {"instruction": "007", "input": 'a "quoted" input', "output": ""},
    ]


def test_the_cache_keys_on_the_data_itself(tmp_path, tokenizer, hub_cache):
    import datasets

    records = _reference()[:10]
    cache = tmp_path / "cache"
    # A save_to_disk folder rewritten with other records: a new key, never the old arrays.
    first = datasets.load_dataset("json", data_files=_json(tmp_path / "a.json", records), split="train")
    first.save_to_disk(str(tmp_path / "saved"))
    a = encode_file(open_source(tmp_path / "saved"), tokenizer, cache_dir=cache)
    assert encode_file(open_source(tmp_path / "saved"), tokenizer, cache_dir=cache).stats["cache"] == "hit"
    second = datasets.load_dataset("json", data_files=_json(tmp_path / "b.json", records[:9]), split="train")
    shutil.rmtree(tmp_path / "saved")
    second.save_to_disk(str(tmp_path / "saved"))
    b = encode_file(open_source(tmp_path / "saved"), tokenizer, cache_dir=cache)
    assert (b.stats["cache"], b.stats["examples"], a.stats["examples"]) == ("miss", 9, 10)
    # A parquet file changed in place (same size and name): a new key.
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    assert encode_file(open_source(tmp_path / "d.parquet"), tokenizer, cache_dir=cache).stats["cache"] == "miss"
    assert encode_file(open_source(tmp_path / "d.parquet"), tokenizer, cache_dir=cache).stats["cache"] == "hit"
    changed = [dict(r, output=r["output"].upper()) for r in records]
    pq.write_table(pa.Table.from_pylist(changed), tmp_path / "d.parquet")
    c = encode_file(open_source(tmp_path / "d.parquet"), tokenizer, cache_dir=cache)
    assert c.stats["cache"] == "miss" and c.stats["tokens"] != a.stats["tokens"]
    # A new hub revision: a new key; the same revision again: a hit.
    hub_cache(records)
    assert encode_file(open_source("acme/dolly-mini", columns=DOLLY), tokenizer, cache_dir=cache).stats["cache"] == "miss"
    assert encode_file(open_source("acme/dolly-mini", columns=DOLLY), tokenizer, cache_dir=cache).stats["cache"] == "hit"
    hub_cache(records[:5], revision="f" * 40)
    d = encode_file(open_source("acme/dolly-mini", columns=DOLLY), tokenizer, cache_dir=cache)
    assert (d.stats["cache"], d.stats["examples"]) == ("miss", 5)
    # The column mapping is part of the key: the same file read through other columns is other data.
    keys = {open_source(tmp_path / "d.parquet").key(), open_source(tmp_path / "d.parquet", columns="output=input,input=output").key()}
    assert len(keys) == 2


def _json(path: Path, records: list[dict]) -> str:
    path.write_text(json.dumps(records), encoding="utf-8")
    return str(path)


def test_clear_errors(tmp_path, hub_cache):
    layouts = _write_sources(tmp_path, _reference()[:3])
    with pytest.raises(DataError) as err:
        open_source(tmp_path / "dolly.parquet").check()
    assert str(err.value) == (
        f"{tmp_path / 'dolly.parquet'}: no column 'output' (output); the columns are "
        "['instruction', 'context', 'response', 'category']. Map yours with --data_columns "
        "instruction=COLUMN,input=COLUMN,output=COLUMN."
    )
    with pytest.raises(DataError, match=r"no column 'ctx' \(input\); the columns are \['instruction', 'context'"):
        open_source(layouts["save_to_disk"][0], columns="input=ctx,output=response").check()
    with pytest.raises(DataError, match=r"record 0 \(line 1\) has keys \['category', 'context', 'instruction', 'response'\]; "
                                        r"expected 'instruction' and 'output'"):
        open_source(tmp_path / "dolly.jsonl").check()
    with pytest.raises(DataError, match=r"no split 'test'; it has \['train', 'validation'\]. Choose one with --data_split"):
        open_source(tmp_path / "saved_dict", "test", DOLLY).check()
    with pytest.raises(DataError, match="'prompt' is not an Alpaca field"):
        open_source(tmp_path / "alpaca.json", columns="prompt=instruction")
    with pytest.raises(DataError, match="'context' is not FIELD=COLUMN"):
        open_source(tmp_path / "alpaca.json", columns="context")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="a folder, but not one written by datasets' save_to_disk"):
        open_source(tmp_path / "folder")
    with pytest.raises(DataError, match="no such file. Pass --data_path an Alpaca JSON/JSONL"):
        open_source(tmp_path / "missing.json")
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "output": None}, {"instruction": "b", "output": 3}]
                                        [:1]), tmp_path / "null.parquet")
    with pytest.raises(DataError, match=r"row 0 has no value \(null\) in column 'output' \(output\)"):
        open_source(tmp_path / "null.parquet").check()
    hub_cache(_reference()[:3])
    with pytest.raises(DataError) as err:
        open_source("acme/not-downloaded").check()
    assert str(err.value).startswith(
        "acme/not-downloaded: no such local file or folder, and the Hugging Face dataset 'acme/not-downloaded' is "
        "not in the local cache (")
    assert "while offline (HF_HUB_OFFLINE=1). Fetch it once on a machine with internet" in str(err.value)


def test_hub_id_not_cached_exits_before_loading_a_model(tmp_path):
    from conftest import run_train_expecting_error

    stderr = run_train_expecting_error(tmp_path, ["--data_path", "acme/never-downloaded"])
    assert "error: acme/never-downloaded: no such local file or folder, and the Hugging Face dataset" in stderr
    assert "is not in the local cache" in stderr


@pytest.mark.parametrize("encoding, bom", [
    ("utf-8", codecs.BOM_UTF8), ("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
    ("utf-32-le", codecs.BOM_UTF32_LE),
])
@pytest.mark.parametrize("layout", ["list", "lines"])
def test_json_as_editors_save_it(tmp_path, encoding, bom, layout):
    records = _reference()[-3:]
    text = json.dumps(records, ensure_ascii=False, indent=2) if layout == "list" else "\r\n".join(
        json.dumps(r, ensure_ascii=False) for r in records) + "\r\n"
    path = tmp_path / "d.json"
    path.write_bytes(bom + text.encode(encoding))
    assert load_records(path) == records


def test_undecodable_bytes_name_the_offset(tmp_path):
    path = tmp_path / "latin1.json"
    head = '[{"instruction": "Caf'.encode()
    path.write_bytes(head + "é".encode("latin-1") + b'", "output": "x"}]')
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value).startswith(f"{path}: not valid UTF-8 text at byte offset {len(head)} (invalid continuation byte")
    assert "Re-save the file as UTF-8" in str(err.value)


def test_json_list_read_in_small_chunks_gives_the_same_records_and_lines(tmp_path, monkeypatch):
    records = _reference()
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    monkeypatch.setattr(json_reader, "_READ_CHUNK", 7)
    assert load_records(path) == records
    bad = json.dumps(records[:2], indent=4).splitlines()
    bad[7] = bad[7].replace('"instruction"', 'instruction')  # line 8: an unquoted key
    path.write_text("\n".join(bad), encoding="utf-8")
    with pytest.raises(DataError, match=r"invalid JSON at line 8, column 9: Expecting property name"):
        load_records(path)
    path.write_text('[{"instruction": "a", "output": "b"}] x', encoding="utf-8")
    with pytest.raises(DataError, match=r"invalid JSON at line 1, column 39: extra data after the closing"):
        load_records(path)


QUALITY = [
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"instruction": "Name a color.", "input": "", "output": "Blue."},  # exact repeat
    {"instruction": "Name a color.", "input": "", "output": "Red."},  # same question, other answer: kept
    {"instruction": "Say nothing.", "input": "", "output": "  \n"},  # empty output
    {"instruction": "   ", "input": "context", "output": "An answer."},  # blank instruction
    {"instruction": "Write a long story.", "input": "", "output": "Once upon a time " * 40},  # truncated at 128
]


def test_quality_counts_and_opt_in_drops(tokenizer):
    plain = tokenize_records(QUALITY, tokenizer, 128)
    s = plain.stats
    assert (s["examples"], s["kept"], s["duplicates"], s["empty_outputs"], s["blank_instructions"]) == (6, 6, 1, 1, 1)
    assert (s["response_truncated"], s["dropped_truncated"], s["dropped_empty_or_duplicate"]) == (1, 0, 0)
    ids, _ = plain.example(5)
    assert len(ids) == 128 and ids[-1] != tokenizer.eos_token_id
    assert plain.example(0)[0][-1] == tokenizer.eos_token_id
    dropped = tokenize_records(QUALITY, tokenizer, 128, DropOptions(truncated_responses=True, empty_or_duplicate=True))
    assert (dropped.stats["kept"], dropped.stats["dropped_truncated"], dropped.stats["dropped_empty_or_duplicate"]) == (2, 1, 3)
    for j, i in enumerate([0, 2]):  # the kept ones are the plain run's examples 0 and 2, unchanged
        assert np.array_equal(dropped.example(j)[0], plain.example(i)[0])


def test_dataset_log_line_is_the_same_for_every_source_and_counts_are_logged(tmp_path, tokenizer, caplog):
    caplog.set_level(logging.INFO, logger="train")
    records = _reference()[:12] + QUALITY
    (tmp_path / "a.json").write_text(json.dumps(records), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(_dolly(records)), tmp_path / "d.parquet")
    tokenizer.model_max_length = 128
    lines = []
    for path, columns in ((tmp_path / "a.json", None), (tmp_path / "d.parquet", DOLLY)):
        args = train.DataArguments(data_path=str(path), preprocessing_cache_dir="", data_columns=columns)
        source = open_source(path, columns=columns).check()
        caplog.clear()
        module = train.make_supervised_data_module(tokenizer, args, records=source)
        line = next(r.getMessage() for r in caplog.records if "examples," in r.getMessage())
        lines.append(line.split(": ", 1)[1])
        truncated = module["train_dataset"].encoded.stats["response_truncated"]
        assert truncated >= 2 and (f"{path}: {truncated} examples have their response cut at model_max_length=128 "
                                   "(the EOS is lost, so they teach the model not to stop); trained on as in the "
                                   "original.") in caplog.text
        assert f"{path}: 1 records with an empty output, 1 with a blank instruction, 1 exact repeats of an earlier " \
               "record; trained on as in the original." in caplog.text
    assert lines[0] == lines[1] and lines[0].startswith("18 examples, 15 kept, ")  # 3 prompts fill 128 tokens
    args = train.DataArguments(data_path=str(tmp_path / "a.json"), preprocessing_cache_dir="",
                               drop_truncated_responses=True, drop_empty_or_duplicate_records=True)
    caplog.clear()
    module = train.make_supervised_data_module(tokenizer, args, records=open_source(tmp_path / "a.json").check())
    assert "dropped 3 (--drop_empty_or_duplicate_records)." in caplog.text
    truncated = module["train_dataset"].encoded.stats["dropped_truncated"]
    assert truncated > 0 and f"dropped {truncated} of them (--drop_truncated_responses)." in caplog.text
    assert len(module["train_dataset"]) == 15 - 3 - truncated


def _cache_entry(cache: Path) -> Path:
    entries = [p for p in cache.iterdir() if p.suffix == ".bin"]
    assert len(entries) == 1
    return entries[0]


@pytest.mark.parametrize("damage", ["truncate", "empty", "garble"])
def test_damaged_cache_entry_is_rebuilt(tmp_path, tokenizer, damage, caplog):
    data = tmp_path / "a.json"
    data.write_text(json.dumps(_reference()), encoding="utf-8")
    cache = tmp_path / "cache"
    good_ids = np.array(encode_file(data, tokenizer, cache_dir=cache).input_ids)  # a copy: the entry is mapped
    entry = _cache_entry(cache)
    raw = entry.read_bytes()
    entry.write_bytes({"truncate": raw[: len(raw) // 2], "empty": b"",
                       "garble": raw[:-100] + bytes(b ^ 0xFF for b in raw[-100:])}[damage])
    caplog.set_level(logging.WARNING)
    again = encode_file(data, tokenizer, cache_dir=cache)
    assert f"preprocessing cache {entry} is damaged" in caplog.text
    assert again.stats["cache"] == "miss" and np.array_equal(again.input_ids, good_ids)
    assert entry.read_bytes() == raw  # rebuilt in place
    assert encode_file(data, tokenizer, cache_dir=cache).stats["cache"] == "hit"


def test_training_goes_through_damaged_cache_entries(tmp_path, tiny_llama_dir, warm):
    """train.py (in the warm Python, tests/warm_python.py) with an emptied, a truncated and a garbled cache entry:
    each is named, rebuilt, trained through."""
    import sys

    from transformers import AutoTokenizer

    from alpaca_lib.core.modeling import missing_special_tokens
    from alpaca_lib.data.cache import cache_key
    from conftest import REPO_ROOT

    data, held = tmp_path / "a.json", tmp_path / "eval.json"
    data.write_text(json.dumps(_reference()[:16]), encoding="utf-8")
    held.write_text(json.dumps(_reference()[16:24]), encoding="utf-8")
    cache = tmp_path / "cache"
    # The training set's entry, where train.py will look for it (its tokenizer set up as train.py does).
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir, model_max_length=128, padding_side="right")
    tok.add_special_tokens(missing_special_tokens(tok))
    entry = cache / f"{cache_key(open_source(data), tok, 128)}.bin"
    cache.mkdir()
    entry.write_bytes(b"")
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), "--model_name_or_path", str(tiny_llama_dir),
           "--data_path", str(data), "--eval_data_path", str(held), "--output_dir", str(tmp_path / "out"),
           "--max_steps", "1", "--per_device_train_batch_size", "2", "--save_strategy", "no",
           "--report_to", "none", "--model_max_length", "128", "--preprocessing_cache_dir", str(cache),
           "--overwrite_output_dir", "True"]
    first = warm.run_script(cmd, tmp_path)
    assert f"preprocessing cache {entry} is damaged (empty file); rebuilding it" in first
    assert first.count("preprocessing cache: miss") == 2 and entry.stat().st_size > 0
    (held_entry,) = [p for p in cache.glob("*.bin") if p != entry]
    raw, held_raw = entry.read_bytes(), held_entry.read_bytes()
    entry.write_bytes(raw[: len(raw) - 1000])
    garbled = bytearray(held_raw)
    garbled[-100] ^= 0xFF  # one bit of the arrays
    held_entry.write_bytes(bytes(garbled))
    second = warm.run_script(cmd, tmp_path)
    assert f"preprocessing cache {entry} is damaged ({len(raw) - 1000} bytes, expected {len(raw)}" in second
    assert f"preprocessing cache {held_entry} is damaged (checksum mismatch (garbled bytes)); rebuilding it" in second
    assert second.count("preprocessing cache: miss") == 2
    assert (entry.read_bytes(), held_entry.read_bytes()) == (raw, held_raw)
    assert (tmp_path / "out" / "model.safetensors").exists()


# One record check for every reader of Alpaca-style records: each keeps its own wording.
BAD_RECORDS = [  # (record, training data, regen.json, export, seed task's instance)
    (7,
     "{p}: record 0 is a int, expected an object with 'instruction' and 'output' (and optionally 'input').",
     "{p}: item 0 needs string 'instruction', 'input' and 'output'; found int. Fix or move the file to start afresh.",
     "{p}: item 0 is int, expected an object",
     None),
    ({"output": "o", "input": 4},
     "{p}: record 0 has keys ['input', 'output']; expected 'instruction' and 'output' (and optionally 'input'). "
     "Missing: instruction.",
     "{p}: item 0 needs string 'instruction', 'input' and 'output'; found ['input', 'output']. Fix or move the "
     "file to start afresh.",
     "{p}: item 0 has no string 'instruction' (keys ['input', 'output']); expected instruction, input, output",
     "{p}:1: instances[0].input must be a string; found 4"),
    ({"instruction": "i", "input": 4},  # two problems: each reader reports the first in its own order
     "{p}: record 0 has keys ['input', 'instruction']; expected 'instruction' and 'output' (and optionally "
     "'input'). Missing: output.",
     "{p}: item 0 needs string 'instruction', 'input' and 'output'; found ['input', 'instruction']. Fix or move the "
     "file to start afresh.",
     "{p}: item 0 has no string 'input' (keys ['input', 'instruction']); expected instruction, input, output",
     "{p}:1: instances[0].input must be a string; found 4"),
    ({"instruction": "i", "output": 3},
     "{p}: record 0 field 'output' is a int (3), expected a string. Convert it to text, or use \"\" for an empty input.",
     "{p}: item 0 needs string 'instruction', 'input' and 'output'; found ['instruction', 'output']. Fix or move "
     "the file to start afresh.",
     "{p}: item 0 has no string 'output' (keys ['instruction', 'output']); expected instruction, input, output",
     "{p}:1: instances[0].input must be a string; found None"),
]


@pytest.mark.parametrize("record,data_msg,regen_msg,export_msg,instance_msg", BAD_RECORDS)
def test_every_reader_checks_records_with_the_one_check_in_its_own_words(tmp_path, monkeypatch, record, data_msg,
                                                                         regen_msg, export_msg, instance_msg):
    from alpaca_lib.core.errors import UsageError
    from alpaca_lib.generation import export, postprocess, regen

    calls = []
    original = check_record
    monkeypatch.setattr(postprocess, "check_record", lambda *a, **k: calls.append("seeds") or original(*a, **k))
    for module in (regen, export):
        monkeypatch.setattr(module, "check_record", lambda *a, **k: calls.append("runner") or original(*a, **k))
    path = tmp_path / "items.json"
    path.write_text(json.dumps([record]), encoding="utf-8")
    with pytest.raises(DataError) as e:
        list(iter_json_records(str(path), ["instruction", "output"], ["input"], "--data_path"))
    assert str(e.value) == data_msg.format(p=path)
    for read, message in ((lambda: regen.load_legacy_regen(path), regen_msg),
                          (lambda: export.export_alpaca(path, tmp_path / "out.json"), export_msg)):
        with pytest.raises(UsageError) as e:
            read()
        assert type(e.value) is UsageError and str(e.value) == message.format(p=path)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"instruction": "i", "instances": [record]}) + "\n", encoding="utf-8")
    if instance_msg is None:  # not an object: the seed reader's own check of "instances" words it
        instance_msg = "{p}:1: 'instances' must be a non-empty list of {{\"input\": ..., \"output\": ...}} objects"
    with pytest.raises(UsageError) as e:
        postprocess.load_seed_tasks(seeds)
    assert str(e.value) == instance_msg.format(p=seeds)
    # The seed reader checks the task, then (when "instances" holds an object) its first instance.
    assert calls == ["runner", "runner", "seeds"] + ([] if record == 7 else ["seeds"])
    assert not (tmp_path / "out.json").exists()


def test_record_check_blank_and_absent_fields():
    from alpaca_lib.core.errors import UsageError

    record = {"instruction": " \t", "output": "o"}
    assert check_record(record, "r", ["instruction", "output"]) is record
    with pytest.raises(DataError, match=r"^r field 'instruction' is blank; expected some text\.$"):
        check_record(record, "r", ["instruction", "output"], non_blank=["instruction"])
    # With `missing=None` an absent field is reported as not a string, in field order; optional ones may be absent.
    words = RecordMessages(missing=None, not_string="{where}: {key}={value!r} ({type}) of {keys}")
    with pytest.raises(UsageError, match=r"^r: input=None \(NoneType\) of \['output'\]$"):
        check_record({"output": "o"}, "r", ["input", "instruction", "output"], messages=words, error=UsageError)
    assert check_record({"instruction": "i", "output": "o"}, "r", ["instruction", "input", "output"], ["input"],
                        messages=words) == {"instruction": "i", "output": "o"}
