"""Users' mistakes through the command line: each gets one `error: ...` line, before any model loads,
and leaves nothing behind.

    .venv/bin/python -m pytest tests/test_bad_input.py -q

`run_train_expecting_error` (conftest) gives train.py a model folder that passes the path checks but
cannot be loaded, so a check that ran too late shows up as a traceback instead of the expected message.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, logged_steps, run_train_expecting_error, write_alpaca_subset


def _data(tmp_path: Path) -> Path:
    return write_alpaca_subset(tmp_path / "data.json", slice(0, 8))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lerning_rate", "1e-4"],
         "error: train.py: unknown flag --lerning_rate (did you mean --learning_rate?). See `train.py --help`."),
        (["--learning_rate", "fast"],
         "error: argument --learning_rate/--learning-rate: invalid float value: 'fast'. See `python train.py --help`."),
        (["--per_device_train_batch_size", "0"], "error: --per_device_train_batch_size 0 is out of range: expected >= 1."),
        (["--gradient_accumulation_steps", "0"], "error: --gradient_accumulation_steps 0 is out of range: expected >= 1."),
        (["--learning_rate", "-0.5"], "error: --learning_rate -0.5 is out of range: expected > 0."),
        (["--num_train_epochs", "0"], "error: --num_train_epochs 0.0 is out of range: expected > 0 (or set --max_steps)."),
        (["--max_steps", "-5"],
         "error: --max_steps -5 is out of range: expected >= 1, or -1 (the default) to train for --num_train_epochs."),
        (["--model_max_length", "1"],
         "error: --model_max_length 1 is out of range: expected >= 2 tokens (room for a prompt token and a response token)."),
        (["--lora_r", "8", "--lora_dropout", "1.5"],
         "error: --lora_dropout 1.5 is out of range: expected a probability in [0, 1)."),
        (["--load_best_model_at_end", "True"],
         "error: --load_best_model_at_end requires the save and eval strategy to match"),
    ],
)
def test_train_flag_mistakes(tmp_path, args, message):
    stderr = run_train_expecting_error(tmp_path, ["--data_path", str(_data(tmp_path)), *args])
    assert message in stderr


def test_train_tracker_that_is_not_installed(tmp_path):
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed here")
    stderr = run_train_expecting_error(tmp_path, ["--data_path", str(_data(tmp_path)), "--report_to", "tensorboard"])
    assert ("error: --report_to tensorboard: the tensorboard package is not installed. Fix: pip install tensorboard "
            "(in this environment), or pass --report_to none.") in stderr


def test_train_model_paths(tmp_path):
    data = str(_data(tmp_path))
    stderr = run_train_expecting_error(tmp_path, ["--data_path", data, "--model_name_or_path", "./models/llama-7b"])
    assert (f"error: --model_name_or_path ./models/llama-7b: no such folder ({tmp_path}/models/llama-7b). Check the "
            "path, or pass a Hugging Face hub id such as owner/model.") in stderr
    # A folder that exists but holds no model: named, with what it holds.
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "notes.txt").write_text("")
    stderr = run_train_expecting_error(tmp_path, ["--data_path", data, "--model_name_or_path", "weights"])
    assert ("error: --model_name_or_path weights: the folder holds no config.json, so it is not a Hugging Face model "
            "folder; it holds notes.txt.") in stderr
    # A hub id, offline, not in the cache (the tests run with HF_HUB_OFFLINE=1, as scripts/test.sh sets).
    stderr = run_train_expecting_error(tmp_path, ["--data_path", data, "--model_name_or_path", "nobody/no-such-model"])
    assert ("error: --model_name_or_path nobody/no-such-model: not a local folder, and the Hugging Face hub is offline "
            "(HF_HUB_OFFLINE=1) with no cached copy of config.json.") in stderr
    stderr = run_train_expecting_error(tmp_path, ["--data_path", data, "--model_name_or_path", "weights",
                                                  "--gguf_file", "model.gguf"])
    assert "error: --model_name_or_path weights: the folder has no GGUF file model.gguf (--gguf_file)" in stderr


def test_train_output_paths(tmp_path):
    data = str(_data(tmp_path))
    (tmp_path / "taken").write_text("a file, not a folder")
    stderr = run_train_expecting_error(tmp_path, ["--data_path", data], output_dir=tmp_path / "taken")
    assert "error: --output_dir " + str(tmp_path / "taken") + ": this is a file; pass a folder" in stderr
    assert (tmp_path / "taken").read_text() == "a file, not a folder"
    stderr = run_train_expecting_error(tmp_path, ["--data_path", data], output_dir=tmp_path / "taken" / "run1")
    assert f"error: --output_dir {tmp_path}/taken/run1: {tmp_path}/taken is a file" in stderr
    # The base model's own folder: the final save would overwrite the model being trained.
    model = tmp_path / "unloadable-model"
    stderr = run_train_expecting_error(tmp_path, ["--data_path", data], output_dir=model)
    assert f"error: --output_dir {model} is --model_name_or_path {model}: writing it would destroy an input." in stderr
    assert sorted(p.name for p in model.iterdir()) == ["config.json"]
    # A folder that holds the base model: rotation or --overwrite_output_dir would delete it.
    stderr = run_train_expecting_error(tmp_path, ["--data_path", data], output_dir=tmp_path)
    assert f"error: --output_dir {tmp_path} holds --model_name_or_path {model}: writing it would destroy an input." in stderr


def test_train_refuses_to_resume_another_runs_checkpoint(tmp_path, tiny_llama_dir, warm):
    """A checkpoint records the model and the data it was trained from; the same --output_dir with other
    data is refused (nothing changed in it), copies of the same model and data resume, and
    --overwrite_output_dir starts afresh. (In the warm Python, tests/warm_python.py.)"""
    import shutil

    first, second = write_alpaca_subset(tmp_path / "a.json", slice(0, 8)), write_alpaca_subset(tmp_path / "b.json", slice(8, 16))
    out = tmp_path / "out"
    base = [sys.executable, str(REPO_ROOT / "train.py"), "--output_dir", str(out), "--per_device_train_batch_size", "4",
            "--save_strategy", "steps", "--save_steps", "1", "--report_to", "none", "--model_max_length", "256",
            "--preprocessing_cache_dir", "", "--lr_scheduler_type", "constant",  # constant: a run may grow longer
            "--logging_steps", "1"]
    model = ["--model_name_or_path", str(tiny_llama_dir)]
    warm.run_script([*base, *model, "--data_path", str(first), "--max_steps", "1"], tmp_path)
    manifest = json.loads((out / "checkpoint-1" / "checkpoint_manifest.json").read_text())["run"]
    assert (manifest["model"], manifest["data"], len(manifest["data_sha256"])) == (str(tiny_llama_dir), str(first), 64)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    log = warm.run_script([*base, *model, "--data_path", str(second), "--max_steps", "2"], tmp_path, expect=1)
    second_sha = hashlib.sha256(b"kind=json;split=train;columns=instruction=instruction,input=input,output=output\n"
                                + second.read_bytes()).hexdigest()
    assert (f"error: --output_dir {out} holds checkpoint-1 of another run (training data {first} (sha256 "
            f"{manifest['data_sha256'][:12]}) then, {second} (sha256 {second_sha[:12]}) now); resuming would mix the "
            "two. Fix: pass another --output_dir, or --overwrite_output_dir True") in log
    assert "Traceback" not in log and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    # The same model and data under other names (a copy on another disk) are the same run: it resumes.
    shutil.copytree(tiny_llama_dir, tmp_path / "model-copy")
    (tmp_path / "a-copy.json").write_bytes(first.read_bytes())
    log = warm.run_script([*base, "--model_name_or_path", str(tmp_path / "model-copy"), "--data_path",
                      str(tmp_path / "a-copy.json"), "--max_steps", "2"], tmp_path)
    assert f"resuming from {out}/checkpoint-1 (step 1), found in --output_dir" in log
    assert logged_steps(log) == 1  # step 2 only
    log = warm.run_script([*base, *model, "--data_path", str(second), "--max_steps", "1", "--overwrite_output_dir", "True"],
                     tmp_path)
    assert "resuming" not in log
    assert json.loads((out / "checkpoint-1" / "checkpoint_manifest.json").read_text())["run"]["data_sha256"] == second_sha


def _fails(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


def test_unknown_flags_of_the_fire_commands_name_the_nearest_known_one(tmp_path):
    """fire would run the command first (or pass the flag into **kwargs): the check comes before anything."""
    py = sys.executable
    cases = [
        ([py, "-m", "generate_instruction", "generate_instruction_following_data", "--output_dir", "g",
          "--num_instructions_to_generat", "5"],
         "error: generate_instruction.py generate_instruction_following_data: unknown flag "
         "--num_instructions_to_generat (did you mean --num_instructions_to_generate?). "
         "See `generate_instruction.py generate_instruction_following_data --help`."),
        ([py, "-m", "generate_instruction", "to_alpaca", "--input-pth", "g"],
         "error: generate_instruction.py to_alpaca: unknown flag --input-pth (did you mean --input_path?). "
         "See `generate_instruction.py to_alpaca --help`."),
        ([py, str(REPO_ROOT / "weight_diff.py"), "recover", "--path_raw", "r", "--path_diff", "d", "--path_tunned", "t"],
         "error: weight_diff.py recover: unknown flag --path_tunned (did you mean --path_tuned?). "
         "See `weight_diff.py recover --help`."),
        ([py, str(REPO_ROOT / "eval_model.py"), "outputs", "--instructions_path", "i.json", "--output_path", "o.json",
          "--model_dir", "m", "--max_new_tokns", "5", "--colour=red"],
         "error: eval_model.py outputs: unknown flags --max_new_tokns (did you mean --max_new_tokens?); --colour. "
         "See `eval_model.py outputs --help`."),
        ([py, str(REPO_ROOT / "eval_model.py"), "outputs", "--instructions_path", "i.json", "--output_path", "o.json",
          "--model_dir", "m", "-max_new_tokns", "5"],
         "error: eval_model.py outputs: unknown flag -max_new_tokns (did you mean --max_new_tokens?). "
         "See `eval_model.py outputs --help`."),
        ([py, str(REPO_ROOT / "eval_model.py"), "judge", "--model_outputs", "a", "--reference_outputs", "b",
          "--judge_model", "j", "--output_dir", "o", "--max_concurency", "2"],
         "error: eval_model.py judge: unknown flag --max_concurency (did you mean --max_concurrency?). "
         "See `eval_model.py judge --help`."),
        ([py, str(REPO_ROOT / "prepare_data.py"), "convert", "--data_path", "d.json", "--output_pth", "x.json"],
         "error: prepare_data.py convert: unknown flag --output_pth (did you mean --output_path?). "
         "See `prepare_data.py convert --help`."),
        ([py, "-m", "alpaca_lib.evaluation.infer", "m", "--instructon", "hi"],
         "error: python -m alpaca_lib.evaluation.infer: unknown flag --instructon (did you mean --instruction?). "
         "See `python -m alpaca_lib.evaluation.infer --help`."),
    ]
    for cmd, message in cases:
        assert _fails(cmd, tmp_path) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_outputs_that_would_destroy_an_input_are_refused(tmp_path):
    py = sys.executable
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "eval.json").write_text('[{"instruction": "a"}]')
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cases = [
        ([py, str(REPO_ROOT / "weight_diff.py"), "make_diff", "--path_raw", "model", "--path_tuned", "tuned",
          "--path_diff", "model", "--overwrite", "True"],
         "error: --path_diff model is --path_raw model: writing it would destroy an input. Pick another --path_diff."),
        ([py, str(REPO_ROOT / "weight_diff.py"), "recover", "--path_raw", "model", "--path_diff", "diff",
          "--path_tuned", ".", "--overwrite", "True"],
         "error: --path_tuned . holds --path_raw model: writing it would destroy an input. Pick another --path_tuned."),
        ([py, str(REPO_ROOT / "eval_model.py"), "outputs", "--instructions_path", "eval.json",
          "--output_path", "./eval.json", "--model_dir", "model"],
         "error: --output_path ./eval.json is --instructions_path eval.json: writing it would destroy an input. "
         "Pick another --output_path."),
        ([py, str(REPO_ROOT / "eval_model.py"), "judge", "--model_outputs", "eval.json", "--reference_outputs",
          "eval.json", "--judge_model", "j", "--output_dir", "eval.json"],
         "error: --output_dir eval.json: this is a file; pass a folder (it is created if it does not exist)."),
        ([py, str(REPO_ROOT / "prepare_data.py"), "convert", "--data_path", "eval.json", "--output_path", "eval.json"],
         "error: --output_path eval.json is --data_path eval.json: writing it would destroy an input. "
         "Pick another --output_path."),
        ([py, str(REPO_ROOT / "eval_model.py"), "chat", "--model_dir", "./no-such-model"],
         f"error: --model_dir ./no-such-model: no such folder ({tmp_path}/no-such-model). Pass a saved model's folder "
         "(train.py's --output_dir, for one)."),
    ]
    for cmd, message in cases:
        assert _fails(cmd, tmp_path) == message
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_second_writer_of_an_evaluation_output_is_refused(tmp_path):
    """`eval_model.py outputs` locks its output file and `judge` its folder, as the generator does, so two runs
    never interleave one journal. The refusal names the holder; nothing of its files changes."""
    import os

    from alpaca_lib.core.locking import output_lock

    py = sys.executable
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # never loaded: the refusal comes first
    (tmp_path / "eval.json").write_text('[{"instruction": "a", "output": "b"}]')
    (tmp_path / "runs").mkdir()
    with output_lock(tmp_path / "runs", "the test's holder", name=".outputs.json.lock"):
        last = _fails([py, str(REPO_ROOT / "eval_model.py"), "outputs", "--instructions_path", "eval.json",
                       "--output_path", "runs/outputs.json", "--model_dir", "model"], tmp_path)
        # Another output file in the same folder is not held by that lock.
        with output_lock(tmp_path / "runs", "another output", name=".other.json.lock"):
            pass
    assert last.startswith(f"error: runs/outputs.json is in use by pid {os.getpid()} on ") and "(the test's holder, started " in last
    with output_lock(tmp_path / "judged", "the test's judge"):
        last = _fails([py, str(REPO_ROOT / "eval_model.py"), "judge", "--model_outputs", "eval.json",
                       "--reference_outputs", "eval.json", "--judge_model", "j", "--output_dir", "judged",
                       "--base_url", "http://127.0.0.1:9/v1"], tmp_path)
        assert sorted(os.listdir(tmp_path / "judged")) == [".alpaca.lock"]
    assert last.startswith(f"error: judged is in use by pid {os.getpid()} on ") and "(the test's judge, started " in last
    assert sorted(os.listdir(tmp_path / "runs")) == [] and sorted(os.listdir(tmp_path / "judged")) == []


def test_generator_without_a_key_leaves_no_output_folder(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    proc = subprocess.run([sys.executable, "-m", "generate_instruction", "generate_instruction_following_data",
                           "--output_dir", str(tmp_path / "regen"), "--num_instructions_to_generate", "5"],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        "error: no OpenAI API key: set OPENAI_API_KEY (or pass --api_key), or point --base_url / OPENAI_BASE_URL at "
        "a local OpenAI-compatible server")
    assert os.listdir(tmp_path) == []


def test_data_the_reader_cannot_parse_gets_a_clear_error(tmp_path):
    """Errors that the datasets library raises while streaming a file, and a mapped column that a JSON
    file lacks, are reported like any other bad record."""
    py, convert = sys.executable, str(REPO_ROOT / "prepare_data.py")
    (tmp_path / "quote.csv").write_text('instruction,output\n"a,b\n')
    (tmp_path / "latin1.csv").write_bytes(b"instruction,output\nx,caf\xe9\n")
    (tmp_path / "dolly.jsonl").write_text('{"instruction": "a", "context": "c", "response": "b"}\n')
    assert _fails([py, convert, "convert", "--data_path", "quote.csv", "--output_path", "o.json"], tmp_path) == (
        "error: quote.csv: could not be read after row 0 (ParserError: Error tokenizing data. C error: EOF inside "
        "string starting at row 1). Check the file there, or re-save it (UTF-8, one header row).")
    assert _fails([py, convert, "convert", "--data_path", "latin1.csv", "--output_path", "o.json"], tmp_path).startswith(
        "error: latin1.csv: could not be read as csv (UnicodeDecodeError: ")
    assert _fails([py, convert, "convert", "--data_path", "dolly.jsonl", "--output_path", "o.json", "--data_columns",
                   "input=contxt,output=response"], tmp_path) == (
        "error: dolly.jsonl: record 0 (line 1) has keys ['context', 'instruction', 'response']; expected 'instruction' "
        "and 'response' and 'contxt'. Missing: contxt.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dolly.jsonl", "latin1.csv", "quote.csv"]


def test_a_server_address_that_is_not_one_is_refused_before_any_request(tmp_path):
    """A --base_url without http(s):// and a host would cost every retry of the first request before failing;
    it is refused at once, with any password in it left out of the message."""
    py = sys.executable
    (tmp_path / "o.json").write_text('[{"instruction": "a", "output": "b"}]')
    cases = [
        ([py, "-m", "generate_instruction", "generate_instruction_following_data", "--output_dir", str(tmp_path / "g"),
          "--base_url", "localhost:8000/v1"], "localhost:8000/v1"),
        ([py, str(REPO_ROOT / "eval_model.py"), "judge", "--model_outputs", "o.json", "--reference_outputs", "o.json",
          "--judge_model", "j", "--output_dir", "j", "--base_url", "http://user:s3cret@"], "http://"),
    ]
    for cmd, shown in cases:
        assert _fails(cmd, tmp_path if "judge" in cmd else REPO_ROOT) == (
            f"error: --base_url {shown} is not an http(s) address with a host; pass the server's API root, "
            "e.g. http://127.0.0.1:8000/v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]
