"""Flags from a YAML file: bash scripts/test.sh tests/test_config_file.py

`expand_config` on its own (flags before the typed ones, every YAML type, clear errors), and the fire
commands reading `--config`. train.py's own test (a command-line override wins) is in test_train.py.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Optional

import pytest

from alpaca_lib.core.cli import run_fire
from alpaca_lib.core.commands import check_text
from alpaca_lib.core.config_file import config_flags, expand_config, expand_fire_config
from alpaca_lib.core.errors import UsageError
from conftest import REPO_ROOT

KNOWN = ["--learning_rate", "--fsdp", "--report_to", "--bf16", "--fsdp_config", "--output_dir", "--seed"]


def _yaml(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_file_flags_come_first_so_typed_ones_win(tmp_path):
    path = _yaml(tmp_path, "learning_rate: 2.0e-5\nfsdp: full_shard auto_wrap\nreport_to: [none, wandb]\n"
                           "bf16: true\nfsdp_config: {min_num_params: 0}\nseed: null\n")
    argv = expand_config(["--output_dir", "out", "--config", path, "--learning_rate", "1e-4"], KNOWN, "train.py")
    assert argv == ["--learning_rate", "2e-05", "--fsdp", "full_shard auto_wrap", "--report_to", "none", "wandb",
                    "--bf16", "True", "--fsdp_config", '{"min_num_params": 0}',
                    "--output_dir", "out", "--learning_rate", "1e-4"]
    assert expand_config(["--seed", "1"], KNOWN, "train.py") == ["--seed", "1"]  # no --config: unchanged


def test_unknown_key_names_the_file_and_the_nearest_flag(tmp_path):
    path = _yaml(tmp_path, "lerning_rate: 1\nbf16: true\n")
    with pytest.raises(UsageError) as e:
        expand_config([f"--config={path}"], KNOWN, "train.py")
    assert str(e.value) == (f"--config {path}: unknown key 'lerning_rate' (did you mean learning_rate?); the keys "
                            "are train.py's flags without the leading -- (see `train.py --help`).")


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "expected a mapping of flag names to values (`learning_rate: 2.0e-5`), found a list."),
    ("a: [1,\n", "not valid YAML on line 2"),
])
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path, text, message):
    path = _yaml(tmp_path, text)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        expand_config(["--config", path], KNOWN, "train.py")


def test_missing_file_and_missing_path(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        expand_config(["--config", str(tmp_path / "nope.yaml")], KNOWN, "train.py")
    with pytest.raises(UsageError, match="--config needs the path of a YAML file"):
        expand_config(["--config"], KNOWN, "train.py")


def test_fire_values_keep_their_types():
    flags = config_flags({"model_dir": "123", "max_new_tokens": 64, "chat": True, "name": "runs/x y",
                          "stop": ["a", "b"], "system_prompt": "Hi, there"},
                         ["--model_dir", "--max_new_tokens", "--chat", "--name", "--stop", "--system_prompt"],
                         "f.yaml", "cmd", style="fire")
    assert flags == ["--model_dir='123'", "--max_new_tokens=64", "--chat=True", "--name='runs/x y'",
                     '--stop=["a", "b"]', "--system_prompt='Hi, there'"]


def _command(got: dict):
    def command(text: str = "", maybe: Optional[str] = None, count: int = 0, anything=None):
        got.update(text=text, maybe=maybe, count=count, anything=anything)
    return command


def test_text_flags_reach_a_fire_command_as_typed(tmp_path):
    """fire reads a value as Python first: `Hi, there` was the tuple ('Hi', 'there'), `3, 1, 2` a tuple of numbers
    and `42` a number. A flag declared as text (`str`, `Optional[str]`) now gets the text; others keep fire's
    reading; a --config file's strings are strings, its numbers numbers."""
    got = {}
    run_fire(_command(got), "cmd", ["--text", "Hi, there", "--maybe=3, 1, 2", "--count", "7", "--anything", "1, 2"])
    assert got == {"text": "Hi, there", "maybe": "3, 1, 2", "count": 7, "anything": (1, 2)}
    run_fire({"go": _command(got)}, "cmd", ["go", "--text", "42", "--maybe", "'quoted', too", "--count=3"])
    assert got == {"text": "42", "maybe": "'quoted', too", "count": 3, "anything": None}
    path = _yaml(tmp_path, "text: Hi, there\nmaybe: '42'\nanything: 7\n")
    run_fire(_command(got), "cmd", ["--config", path, "--count", "1"])
    assert got == {"text": "Hi, there", "maybe": "42", "count": 1, "anything": 7}


def test_a_text_flag_left_without_text_is_refused():
    with pytest.raises(UsageError) as refused:
        check_text(instruction="Hi", system_prompt=True)
    assert str(refused.value) == ("--system_prompt must be text, not the bool True: give it as --system_prompt "
                                  "TEXT (in a --config file, put the value in quotes).")


def test_fire_command_name_stays_first(tmp_path):
    path = _yaml(tmp_path, "output_path: from_file.json\n")

    def outputs(model_dir, output_path="x.json"):
        return model_dir, output_path

    argv = expand_fire_config(["outputs", "--model_dir", "m", "--config", path], {"outputs": outputs}, "eval_model.py")
    assert argv == ["outputs", "--output_path='from_file.json'", "--model_dir", "m"]


def test_prepare_data_convert_reads_a_config_and_the_command_line_wins(tmp_path):
    data = tmp_path / "d.json"
    data.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c d e", "output": "f"}]', encoding="utf-8")
    path = _yaml(tmp_path, f"data_path: {data}\noutput_path: {tmp_path / 'file.json'}\nmax_words: 2\n")
    result = subprocess.run([sys.executable, "prepare_data.py", "convert", "--config", path, "--output_path",
                             str(tmp_path / "typed.json")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"{tmp_path / 'typed.json'}: wrote 1 of 2 records (1 longer than 2 words left out)"
    assert not (tmp_path / "file.json").exists()


README_COMMAND = [  # the README's Alpaca-7B flags, as typed there
    "--data_path", "./alpaca_data.json", "--bf16", "True", "--num_train_epochs", "3",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--gradient_accumulation_steps", "8",
    "--evaluation_strategy", "no", "--save_strategy", "steps", "--save_steps", "2000", "--save_total_limit", "1",
    "--learning_rate", "2e-5", "--weight_decay", "0.", "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine",
    "--logging_steps", "1", "--fsdp", "full_shard auto_wrap", "--fsdp_transformer_layer_cls_to_wrap",
    "LlamaDecoderLayer", "--tf32", "True",
]


def _parsed(argv):
    import warnings

    from alpaca_lib.training.args import parse_flags

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # --tf32 / --fsdp on a machine without a GPU
        return [dataclasses.asdict(a) for a in parse_flags(argv)]


def test_alpaca_7b_config_is_the_readme_command_and_the_command_line_wins(tmp_path):
    own = ["--model_name_or_path", "llama-7b", "--output_dir", str(tmp_path / "out")]
    from_file = _parsed(["--config", str(REPO_ROOT / "configs" / "alpaca_7b.yaml"), *own])
    assert from_file == _parsed([*README_COMMAND, *own])
    overridden = _parsed(["--config", str(REPO_ROOT / "configs" / "alpaca_7b.yaml"), *own, "--learning_rate", "1e-5",
                          "--num_train_epochs", "5"])
    assert (overridden[2]["learning_rate"], overridden[2]["num_train_epochs"]) == (1e-5, 5)
    assert from_file[2]["learning_rate"] == 2e-5 and from_file[2]["fsdp"] == overridden[2]["fsdp"]
    assert {k: v for k, v in overridden[2].items() if from_file[2][k] != v and k not in ("learning_rate",
            "num_train_epochs")} == {}


def test_train_py_refuses_an_unknown_key_before_anything_starts(tmp_path):
    path = _yaml(tmp_path, "lerning_rate: 1e-4\n")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--config", path, "--output_dir",
                             str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --config {path}: unknown key 'lerning_rate' (did you mean learning_rate?); the keys are train.py's "
        "flags without the leading -- (see `train.py --help`).")
    assert not (tmp_path / "out").exists()
