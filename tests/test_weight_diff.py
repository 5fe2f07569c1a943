"""Tests for weight_diff.py and its streaming engine (alpaca_lib/weightdiff/).

    .venv/bin/python -m pytest tests/test_weight_diff.py -q

The suite's tiny LLaMA (`tiny_llama_dir`) and a "fine-tuned" copy of it are saved in the layout of the
released Alpaca diff: float32, sharded `.bin` files with `pytorch_model.bin.index.json`, and a tuned
vocabulary one larger than the raw one (`[PAD]` added by `smart_tokenizer_and_embedding_resize`). The
streaming results are compared bit for bit with the original whole-model method.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import weight_diff
from alpaca_lib.core.fileio import staging_dir
from alpaca_lib.core.modeling import missing_special_tokens, smart_tokenizer_and_embedding_resize
from alpaca_lib.weightdiff.diffing import SMOKE_TEST_INSTRUCTION, stream_recover
from alpaca_lib.weightdiff.manifest import MANIFEST_NAME
from alpaca_lib.weightdiff.plan import WeightDiffError, plan_raw, resize_rows
from alpaca_lib.weightdiff.weights import Checkpoint, CheckpointError, SafetensorsWriter
from alpaca_testkit.whole_model import whole_model_make_diff, whole_model_recover
from conftest import REPO_ROOT
from utils import format_prompt

VOCAB = 1000  # raw tokenizer size; the tuned model has VOCAB + 1 rows
ROW_KEYS = ("model.embed_tokens.weight", "lm_head.weight")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32, k
        assert torch.equal(_bits(a[k]), _bits(b[k])), f"{k} differs"


def _save_bin_sharded(model, tokenizer, folder: Path, n_shards: int = 3) -> Path:
    """Saves a model as the 2023 Alpaca release did: pytorch_model-0000i-of-0000n.bin + index, fp32."""
    folder.mkdir(parents=True)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    keys = list(sd)
    size = -(-len(keys) // n_shards)
    weight_map = {}
    for i in range(n_shards):
        name = f"pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
        part = {k: sd[k] for k in keys[i * size : (i + 1) * size]}
        torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _load_sd(folder: Path) -> dict:
    ckpt = Checkpoint(folder)
    out = {k: ckpt.load(k).clone() for k in ckpt.infos}
    ckpt.close()
    return out


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir, tmp_path_factory):
    """The raw tiny LLaMA (no pad token) and a "fine-tuned" one with [PAD], in several on-disk layouts."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    root = tmp_path_factory.mktemp("weight-diff")
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert tok.pad_token is None and len(tok) == VOCAB
    raw = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    tuned, tok_tuned = copy.deepcopy(raw), copy.deepcopy(tok)
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tok_tuned), tok_tuned, tuned)
    torch.manual_seed(0)
    with torch.no_grad():  # what fine-tuning does: move every weight (computed in float64, like
        for p in tuned.parameters():  # many small steps, so tuned is not simply fl(raw + delta))
            p.copy_((p.double() * 0.9 + torch.randn(p.shape, dtype=torch.float64) * 0.01).float())
    paths = {
        "raw_bin": _save_bin_sharded(raw, tok, root / "raw_bin"),
        "tuned_bin": _save_bin_sharded(tuned, tok_tuned, root / "tuned_bin"),
    }
    shutil.copytree(tiny_llama_dir, root / "raw_st")  # one model.safetensors
    tuned.save_pretrained(root / "tuned_st", max_shard_size="300KB")  # sharded safetensors + index
    tok_tuned.save_pretrained(root / "tuned_st")
    paths.update(raw_st=root / "raw_st", tuned_st=root / "tuned_st", root=root)
    assert len(list((root / "tuned_st").glob("model-*.safetensors"))) > 1
    # The released diff's layout: the whole-model diff saved as sharded fp32 .bin (no manifest).
    diff_model = whole_model_make_diff(paths["raw_st"], paths["tuned_st"])
    paths["diff_bin"] = _save_bin_sharded(diff_model, tok_tuned, root / "diff_bin")
    paths["tuned_sd"] = {k: v.detach().clone() for k, v in tuned.state_dict().items()}
    return paths


def test_plan_and_resize_rows_match_smart_resize_bit_for_bit(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plan = plan_raw(tiny["raw_st"])
    assert (plan.special_tokens, plan.num_new_tokens, plan.vocab_size, plan.row_keys) == (
        {"pad_token": "[PAD]"},
        1,
        VOCAB + 1,
        ROW_KEYS,
    )
    model = AutoModelForCausalLM.from_pretrained(tiny["raw_st"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny["raw_st"])
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tokenizer), tokenizer, model)
    raw = Checkpoint(tiny["raw_st"])
    for key, param in (("model.embed_tokens.weight", model.get_input_embeddings().weight),
                       ("lm_head.weight", model.get_output_embeddings().weight)):
        rows = resize_rows(raw.load(key).float(), plan.vocab_size, plan.num_new_tokens)
        assert rows.shape == (VOCAB + 1, 64)
        assert torch.equal(_bits(rows), _bits(param)), key
        # the new row really is the mean, not a copy of some old row
        assert torch.allclose(rows[-1], rows[:-1].mean(0)) and not torch.equal(rows[-1], rows[0])


@pytest.mark.parametrize(
    "raw_layout,tuned_layout",
    [("raw_bin", "tuned_bin"), ("raw_st", "tuned_st"), ("raw_bin", "tuned_st")],
)
def test_make_diff_then_recover_matches_whole_model_bit_for_bit(tiny, tmp_path, raw_layout, tuned_layout):
    path_raw, path_tuned = tiny[raw_layout], tiny[tuned_layout]
    weight_diff.make_diff(path_raw, path_tuned, tmp_path / "diff", max_shard_size="250KB")
    diff = _load_sd(tmp_path / "diff")
    reference_diff = whole_model_make_diff(path_raw, path_tuned).state_dict()
    _assert_bitwise_equal(diff, reference_diff)
    assert len(list((tmp_path / "diff").glob("model-*.safetensors"))) == 4

    weight_diff.recover(path_raw, tmp_path / "diff", tmp_path / "rec", test_inference=False)
    recovered = _load_sd(tmp_path / "rec")
    reference_model, reference_sum = whole_model_recover(path_raw, tmp_path / "diff")
    _assert_bitwise_equal(recovered, reference_model.state_dict())
    manifest = json.loads((tmp_path / "diff" / MANIFEST_NAME).read_text())
    assert abs(manifest["recovered_sum"] - reference_sum) < 1e-3
    # Within float32 rounding of the tuned weights, but (tuned - raw) + raw is not always tuned exactly.
    inexact = 0
    for k, v in tiny["tuned_sd"].items():
        assert torch.allclose(recovered[k], v, rtol=0, atol=1e-6), k
        inexact += int((recovered[k] != v).sum())
    assert inexact > 0
    assert sorted(os.listdir(tmp_path)) == ["diff", "rec"]  # no staging folders left behind


def test_recover_released_layout_bin_diff_without_manifest(tiny, tmp_path):
    """The released diff is sharded fp32 .bin with no manifest: the naive sum is the check."""
    reference_model, reference_sum = whole_model_recover(tiny["raw_st"], tiny["diff_bin"])
    out, result = stream_recover(tiny["raw_st"], tiny["diff_bin"], tmp_path / "rec", expected_sum=reference_sum)
    _assert_bitwise_equal(_load_sd(out), reference_model.state_dict())
    # same tensors, same order as the state dict -> the same float32 running sum
    assert result.recovered_sum == reference_sum
    with pytest.raises(WeightDiffError, match=r"naive integrity check failed: the recovered parameters sum to .*expected 50637\.1836"):
        stream_recover(tiny["raw_st"], tiny["diff_bin"], tmp_path / "rec2")  # default: Alpaca-7B's value
    assert not (tmp_path / "rec2").exists()


def test_old_rotary_buffers_are_summed_but_not_written(tiny, tmp_path):
    """Diffs saved by 2023 transformers carry rotary inv_freq buffers (diff 0); the naive sum included them."""
    from safetensors.torch import load_file, save_file

    diff_dir = tmp_path / "diff"
    weight_diff.make_diff(tiny["raw_st"], tiny["tuned_st"], diff_dir)
    sd = load_file(diff_dir / "model.safetensors")
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16))
    for layer in range(2):
        sd[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)
    save_file(sd, diff_dir / "model.safetensors", metadata={"format": "pt"})
    manifest = json.loads((diff_dir / MANIFEST_NAME).read_text())
    _, result = stream_recover(tiny["raw_st"], diff_dir, tmp_path / "rec", check_integrity_naively=False)
    assert abs(result.recovered_sum - (manifest["recovered_sum"] + 2 * float(inv_freq.sum()))) < 1e-3
    assert not any("inv_freq" in k for k in Checkpoint(tmp_path / "rec").infos)


def test_manifest_names_the_one_corrupted_tensor(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    weight_diff.make_diff(tiny["raw_st"], tiny["tuned_bin"], tmp_path / "diff")
    bad_raw = tmp_path / "raw_corrupt"
    bad_raw.mkdir()
    for f in tiny["raw_st"].iterdir():
        (bad_raw / f.name).write_bytes(f.read_bytes())
    sd = load_file(bad_raw / "model.safetensors")
    target = "model.layers.1.mlp.up_proj.weight"
    sd[target][3, 5] = -sd[target][3, 5]  # one flipped value among ~230k
    save_file(sd, bad_raw / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightDiffError) as err:
        weight_diff.recover(bad_raw, tmp_path / "diff", tmp_path / "rec", test_inference=False, check_integrity_naively=False)
    message = str(err.value)
    assert "1 of 21 recovered tensor(s) differ" in message
    assert f"    {target}\n" in message
    assert message.count("    model.") == 1 and "lm_head" not in message
    assert sorted(os.listdir(tmp_path)) == ["diff", "raw_corrupt"]  # nothing written, no staging folder


def test_wrong_vocabulary_base_gets_a_clear_error(tiny, tmp_path):
    from transformers import AutoTokenizer

    # A base whose tokenizer already defines a pad token: nothing is added, 1000 rows vs the diff's 1001.
    wrong = tmp_path / "raw_with_pad"
    wrong.mkdir()
    for f in tiny["raw_st"].iterdir():
        (wrong / f.name).write_bytes(f.read_bytes())
    tok = AutoTokenizer.from_pretrained(wrong)
    tok.pad_token = tok.unk_token
    tok.save_pretrained(wrong)
    with pytest.raises(WeightDiffError) as err:
        weight_diff.recover(wrong, tiny["diff_bin"], tmp_path / "rec", test_inference=False)
    message = str(err.value)
    assert "2 shape mismatch(es)" in message
    assert "model.embed_tokens.weight: path_diff [1001, 64] vs raw [1000, 64] (raw has 1000 rows; its tokenizer gets 0 new token(s) -> 1000)" in message
    assert "lm_head.weight: path_diff [1001, 64] vs raw [1000, 64]" in message
    assert "different vocabulary" in message and "convert_llama_weights_to_hf.py" in message
    assert not (tmp_path / "rec").exists()

    # A tokenizer longer than the embedding: the original would have left random rows.
    tok.pad_token = None
    tok.add_tokens(["zzzextra"])
    tok.save_pretrained(wrong)
    with pytest.raises(WeightDiffError, match=r"model\.embed_tokens\.weight: raw has 1000 rows but its tokenizer already has 1001 tokens"):
        weight_diff.recover(wrong, tiny["diff_bin"], tmp_path / "rec", test_inference=False)


def test_missing_and_extra_keys_are_named(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    raw = tmp_path / "raw"
    raw.mkdir()
    for f in tiny["raw_st"].iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    sd = load_file(raw / "model.safetensors")
    sd["model.extra.weight"] = sd.pop("model.norm.weight")
    save_file(sd, raw / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightDiffError) as err:
        stream_recover(raw, tiny["diff_bin"], None)
    message = str(err.value)
    assert "1 tensor(s) in path_diff but not in raw: model.norm.weight" in message
    assert "1 tensor(s) in raw but not in path_diff: model.extra.weight" in message


def test_failure_midway_leaves_no_output_folder(tiny, tmp_path, monkeypatch):
    original = SafetensorsWriter.write
    calls = []

    def failing_write(self, key, t):
        calls.append(key)
        if len(calls) == 5:
            raise OSError("disk full (simulated)")
        original(self, key, t)

    monkeypatch.setattr(SafetensorsWriter, "write", failing_write)
    with pytest.raises(OSError, match="simulated"):
        weight_diff.recover(tiny["raw_st"], tiny["diff_bin"], tmp_path / "rec", test_inference=False, check_integrity_naively=False)
    assert len(calls) == 5
    assert os.listdir(tmp_path) == []


HOST = __import__("socket").gethostname().replace("-", "_").replace(".", "_")  # as staging folders name it


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_killed_run_are_cleaned_by_the_next_run(tiny, tmp_path):
    """A hard kill leaves a hidden `.NAME.partial-HOST.PID-*` folder; the same command run again removes it and
    says so. A folder of a process still running (another run writing now), or of another host (whose
    processes cannot be checked from here), is left alone."""
    dead, alive = _dead_pid(), os.getpid()
    partial = tmp_path / f".rec.partial-{HOST}.{dead}-x1"
    partial.mkdir()
    (partial / "model-00001-of-00002.safetensors").write_bytes(b"half")
    busy = tmp_path / f".rec.partial-{HOST}.{alive}-x2"
    busy.mkdir()
    elsewhere = tmp_path / f".rec.partial-otherhost.{dead}-x3"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "weight_diff.py"), "recover", "--path_raw", str(tiny["raw_st"]),
         "--path_diff", str(tiny["diff_bin"]), "--path_tuned", str(tmp_path / "rec"), "--test_inference", "False",
         "--check_integrity_naively", "False"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"{tmp_path}/rec: removed {partial}, the unfinished output of an interrupted run (process {dead})"
            in proc.stderr)
    assert sorted(os.listdir(tmp_path)) == sorted([busy.name, elsewhere.name, "rec"])


def test_a_replace_killed_between_its_renames_gets_the_old_folder_back(tmp_path):
    from alpaca_lib.core.fileio import clean_leftovers

    dead = _dead_pid()
    aside = tmp_path / f".out.old-{HOST}.{dead}-x" / "out"
    aside.mkdir(parents=True)
    (aside / "weights.bin").write_bytes(b"previous")
    assert clean_leftovers(tmp_path / "out") == [
        f"{tmp_path}/out: put back the previous folder, which an interrupted replace had set aside in "
        f"{tmp_path}/.out.old-{HOST}.{dead}-x"]
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out" / "weights.bin").read_bytes() == b"previous"
    assert clean_leftovers(tmp_path / "out") == []


def test_existing_output_is_kept_unless_overwrite(tiny, tmp_path):
    out = tmp_path / "rec"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="pass --overwrite=True"):
        weight_diff.recover(tiny["raw_st"], tiny["diff_bin"], out, test_inference=False, check_integrity_naively=False)
    assert os.listdir(out) == ["keep.txt"]
    weight_diff.recover(tiny["raw_st"], tiny["diff_bin"], out, test_inference=False, check_integrity_naively=False, overwrite=True)
    assert "keep.txt" not in os.listdir(out) and (out / "model.safetensors").is_file()
    assert sorted(os.listdir(tmp_path)) == ["rec"]


def test_recovered_model_loads_and_generates_like_the_tuned_model(tiny, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weight_diff.make_diff(tiny["raw_bin"], tiny["tuned_bin"], tmp_path / "diff")
    weight_diff.recover(tiny["raw_bin"], tmp_path / "diff", tmp_path / "rec", max_new_tokens=12)
    printed = capsys.readouterr().out
    assert "### Instruction:\nList three technologies that make life easier.\n\n### Response:\nCompletion: " in printed
    assert "\r" not in printed
    completion = printed.split("Completion: ", 1)[1].rstrip("\n")

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rec")
    assert tokenizer.pad_token == "[PAD]" and len(tokenizer) == VOCAB + 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "rec")
    assert model.dtype == torch.float32 and model.get_input_embeddings().weight.shape == (VOCAB + 1, 64)
    tuned = AutoModelForCausalLM.from_pretrained(tiny["tuned_bin"], dtype=torch.float32)
    prompt = tokenizer(format_prompt({"instruction": SMOKE_TEST_INSTRUCTION}), return_tensors="pt")
    out = tuned.generate(**prompt, max_new_tokens=12, do_sample=False)
    expected = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert completion == expected and len(out[0]) == prompt["input_ids"].shape[1] + 12


def test_recover_without_path_tuned_writes_nothing(tiny, tmp_path, capsys):
    weight_diff.recover(tiny["raw_st"], tiny["diff_bin"], None, test_inference=False, check_integrity_naively=False)
    assert "passed the checks" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []
    # with the smoke test, the model lives in a temporary folder only while it generates
    weight_diff.recover(tiny["raw_st"], tiny["diff_bin"], None, check_integrity_naively=False, max_new_tokens=3)
    assert "\nCompletion: " in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_bin_with_arbitrary_objects_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    torch.save({"w": torch.zeros(2), "obj": Path("x")}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused to load"):
        Checkpoint(tmp_path / "m")


def test_index_naming_a_missing_shard_is_reported(tiny, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for f in tiny["tuned_bin"].iterdir():
        if not f.name.startswith("pytorch_model-00002"):
            (folder / f.name).write_bytes(f.read_bytes())
    with pytest.raises(CheckpointError, match=r"lists shard\(s\) \['pytorch_model-00002-of-00003.bin'\] that are not in"):
        Checkpoint(folder)


def test_safetensors_writer_output_reads_back_with_safetensors(tmp_path):
    from safetensors import safe_open

    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor(2.5), "c": torch.ones(5, dtype=torch.bfloat16)}
    items = [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    with staging_dir(tmp_path / "out") as tmp:
        writer = SafetensorsWriter(tmp, items, max_shard_size=24)
        for k, v in tensors.items():
            writer.write(k, v)
        assert writer.close() == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index == {"metadata": {"total_size": 38}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                     "b": "model-00002-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}}
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        with safe_open(tmp_path / "out" / name, framework="pt") as f:
            for k in f.keys():
                assert torch.equal(f.get_tensor(k), tensors[k])


def test_cli_reports_bad_input_without_traceback(tiny, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "weight_diff.py"), "recover", "--path_raw", str(tmp_path / "nope"),
         "--path_diff", str(tiny["diff_bin"]), "--path_tuned", str(tmp_path / "rec")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 1
    assert "error: path_raw: " in proc.stderr and "no such folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "rec").exists()


def test_remapping_and_legacy_bin_read_the_same_values(tiny, tmp_path):
    reference = _load_sd(tiny["raw_bin"])
    for folder in (tiny["raw_bin"], tiny["raw_st"]):
        ckpt = Checkpoint(folder, release_every=1)  # drop and reopen the mapping after every tensor
        _assert_bitwise_equal({k: ckpt.load(k).clone() for k in ckpt.infos}, reference)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save(reference, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)  # pre-1.6 format
    ckpt = Checkpoint(legacy)
    _assert_bitwise_equal({k: ckpt.load(k).clone() for k in ckpt.infos}, reference)
    assert ckpt._mapped is False and list(ckpt.infos) == list(reference)


def test_naive_check_with_a_manifest_runs_only_when_asked(tiny, tmp_path):
    weight_diff.make_diff(tiny["raw_st"], tiny["tuned_st"], tmp_path / "diff")
    manifest = json.loads((tmp_path / "diff" / MANIFEST_NAME).read_text())
    # default: the digests are the check, the Alpaca-7B sum is not applied to another model
    _, result = stream_recover(tiny["raw_st"], tmp_path / "diff", None)
    assert abs(result.recovered_sum - manifest["recovered_sum"]) < 1e-3
    stream_recover(tiny["raw_st"], tmp_path / "diff", None, expected_sum=manifest["recovered_sum"])
    with pytest.raises(WeightDiffError, match=r"sum to .* expected 1\.0000 \(atol 0\.01\)"):
        stream_recover(tiny["raw_st"], tmp_path / "diff", None, expected_sum=1.0)


def _refused(*args) -> str:
    """Runs `python weight_diff.py ARGS`, asserts it exits 1 without a traceback, returns its one `error:` line."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "weight_diff.py"), *map(str, args)], capture_output=True,
                          text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    return line


@pytest.mark.parametrize("damage", ["cut", "empty", "not_safetensors"])
def test_a_damaged_diff_file_is_one_error_line_naming_it(tiny, tmp_path, damage):
    """A diff file cut short by 100 bytes (an interrupted copy), emptied, or replaced by text: `recover` names it in
    one line before writing anything, instead of safetensors' traceback."""
    diff = tmp_path / "diff"
    weight_diff.make_diff(tiny["raw_st"], tiny["tuned_st"], diff)
    damaged = sorted(diff.glob("*.safetensors"))[0]
    size = damaged.stat().st_size
    if damage == "cut":
        os.truncate(damaged, size - 100)
    else:
        damaged.write_bytes(b"" if damage == "empty" else b"this is not a safetensors file at all\n")
    line = _refused("recover", "--path_raw", tiny["raw_st"], "--path_diff", diff, "--path_tuned", tmp_path / "rec")
    expected = {
        "cut": f"error: {damaged}: cut short: its header describes {size} bytes, the file has {size - 100}; "
               "re-download or re-create it",
        "empty": f"error: {damaged}: 0 bytes, too short to be a safetensors file; re-download or re-create it",
        "not_safetensors": f"error: {damaged}: its header length (",
    }[damage]
    assert line.startswith(expected), line
    assert line.endswith("re-download or re-create it"), line
    assert not (tmp_path / "rec").exists() and not list(tmp_path.glob(".rec*"))


def test_a_cut_short_bin_input_is_one_error_line_naming_it(tiny, tmp_path):
    """make_diff's tuned model as torch .bin shards, one cut short: one line naming it, nothing written."""
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny["tuned_bin"], tuned)
    shard = sorted(tuned.glob("*.bin"))[0]
    os.truncate(shard, shard.stat().st_size - 100)
    line = _refused("make_diff", "--path_raw", tiny["raw_st"], "--path_tuned", tuned, "--path_diff", tmp_path / "diff")
    assert line.startswith(f"error: {shard}: a torch checkpoint that is cut short or damaged ("), line
    assert line.endswith("; re-download or re-create it"), line
    assert not (tmp_path / "diff").exists()


def _record_mallopt(monkeypatch) -> list:
    """Every `mallopt(param, value)` call made through ctypes from now on, recorded and not applied."""
    import ctypes

    calls, real_cdll = [], ctypes.CDLL

    class RecordingLibrary:
        def __init__(self, *args, **kwargs):
            self._library = real_cdll(*args, **kwargs)

        def __getattr__(self, name):
            if name == "mallopt":
                return lambda *args: calls.append(args) or 1
            return getattr(self._library, name)

    monkeypatch.setattr(ctypes, "CDLL", RecordingLibrary)
    return calls


def test_library_calls_leave_the_process_allocator_alone(tiny, tmp_path, monkeypatch):
    """glibc's mallopt is process-wide: make_diff and recover called in-process (tests, benches, notebooks) leave
    the caller's allocator as it was; only weight_diff.py's command line sets its mmap threshold."""
    calls = _record_mallopt(monkeypatch)
    weight_diff.make_diff(tiny["raw_st"], tiny["tuned_st"], tmp_path / "diff")
    weight_diff.recover(tiny["raw_st"], tmp_path / "diff", tmp_path / "rec", test_inference=False)
    assert calls == []
    ran = []
    monkeypatch.setattr(weight_diff, "run_fire", lambda *args, **kwargs: ran.append(list(calls)))
    weight_diff.main(["recover", "--path_raw", "raw", "--path_diff", "diff"])
    assert ran == [[(-3, 1 << 20)]]  # M_MMAP_THRESHOLD = 1 MiB, set before the command runs
