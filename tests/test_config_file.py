"""Flags from a YAML file: bash scripts/test.sh tests/test_config_file.py

`expand_config` on its own (flags before the typed ones, every YAML type, clear errors), and the fire
commands reading `--config`. train.py's own test (a command-line override wins) is in test_train.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT

from alpaca_lib.config_file import config_flags, expand_config, expand_fire_config
from alpaca_lib.errors import UsageError

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
                          "stop": ["a", "b"]}, ["--model_dir", "--max_new_tokens", "--chat", "--name", "--stop"],
                         "f.yaml", "cmd", style="fire")
    assert flags == ["--model_dir='123'", "--max_new_tokens=64", "--chat=True", "--name=runs/x y", '--stop=["a", "b"]']


def test_fire_command_name_stays_first(tmp_path):
    path = _yaml(tmp_path, "output_path: from_file.json\n")

    def outputs(model_dir, output_path="x.json"):
        return model_dir, output_path

    argv = expand_fire_config(["outputs", "--model_dir", "m", "--config", path], {"outputs": outputs}, "eval_model.py")
    assert argv == ["outputs", "--output_path=from_file.json", "--model_dir", "m"]


def test_prepare_data_convert_reads_a_config_and_the_command_line_wins(tmp_path):
    data = tmp_path / "d.json"
    data.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c d e", "output": "f"}]', encoding="utf-8")
    path = _yaml(tmp_path, f"data_path: {data}\noutput_path: {tmp_path / 'file.json'}\nmax_words: 2\n")
    result = subprocess.run([sys.executable, "prepare_data.py", "convert", "--config", path, "--output_path",
                             str(tmp_path / "typed.json")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"{tmp_path / 'typed.json'}: wrote 1 of 2 records (1 longer than 2 words left out)"
    assert not (tmp_path / "file.json").exists()
