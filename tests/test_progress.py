"""Progress lines for logs: bash scripts/test.sh tests/test_progress.py

A fake clock drives `LogProgress`, so the lines (count, rate, time left) are exact; a real command under a
pipe (`eval_model.py outputs` on the tiny model) shows them in its stderr.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from alpaca_lib.core.progress import INTERVAL_ENV, LogProgress, duration, progress_bar
from conftest import REPO_ROOT


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_lines_come_at_the_interval_with_count_rate_and_time_left():
    clock, out = Clock(), io.StringIO()
    bar = LogProgress(total=100, desc="outputs", unit="answer", stream=out, every_s=30, clock=clock)
    clock.t += 10
    bar.update(10)  # 10 s: under the interval, nothing
    assert out.getvalue() == ""
    clock.t += 20
    bar.update(20)  # 30 s, 30 answers: 1 a second, 70 to go
    bar.set_postfix(tokens_per_s="12.5")
    clock.t += 5
    bar.update(5)  # 5 s after the last line: nothing
    clock.t += 25
    bar.update(5)  # 60 s, 40 answers
    clock.t += 1
    bar.update(60)
    bar.close()
    assert out.getvalue().splitlines() == [
        "outputs: 30 of 100 answers (30%), 1.00 answers/s, about 1m 10s left",
        "outputs: 40 of 100 answers (40%), 0.67 answers/s, about 1m 30s left (tokens_per_s=12.5)",
        "outputs: 100 of 100 answers (100%), 1.64 answers/s, done in 1m 01s (tokens_per_s=12.5)",
    ]


def test_a_resumed_run_counts_its_rate_from_where_it_started():
    clock, out = Clock(), io.StringIO()
    bar = LogProgress(total=10, desc="judge", unit="verdict", initial=6, stream=out, every_s=0, clock=clock)
    clock.t += 4
    bar.update(2)
    assert out.getvalue() == "judge: 8 of 10 verdicts (80%), 0.50 verdicts/s, about 4s left\n"


def test_write_goes_where_tqdm_write_goes(capsys):
    bar = LogProgress(total=2, stream=io.StringIO(), every_s=0)
    bar.write("Batch 0: kept 3")
    assert capsys.readouterr().out == "Batch 0: kept 3\n"


def test_nothing_done_prints_nothing_and_bytes_read_as_megabytes():
    out = io.StringIO()
    LogProgress(total=5, stream=out, every_s=0).close()
    assert out.getvalue() == ""
    clock = Clock()
    bar = LogProgress(total=4e6, desc="recover", unit="B", unit_scale=True, stream=out, every_s=0, clock=clock)
    clock.t += 2
    bar.update(1e6)
    assert out.getvalue() == "recover: 1.0 of 4.0 MB (25%), 0.5 MB/s, about 6s left\n"


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (59, "59s"), (61, "1m 01s"), (3600 + 180, "1h 03m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_progress_bar_picks_log_lines_off_a_terminal(capsys):
    bar = progress_bar(total=3, desc="x", unit="it")  # pytest's captured stderr is not a terminal
    assert isinstance(bar, LogProgress)
    hidden = progress_bar(total=3, disable=True)
    assert not isinstance(hidden, LogProgress) and hidden.disable


def test_outputs_under_a_pipe_prints_progress_lines(tiny_llama_dir, tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps([{"instruction": f"Say {w}."} for w in "abcde"]), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "eval_model.py"), "outputs", "--model_dir", str(tiny_llama_dir),
         "--instructions_path", "eval.json", "--output_path", "out.json", "--max_new_tokens", "4", "--batch_size", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, INTERVAL_ENV: "0"})
    assert proc.returncode == 0, proc.stderr
    lines = [re.sub(r"[0-9.]+ answers/s.*", "RATE", x) for x in proc.stderr.splitlines() if x.startswith("outputs: ")]
    assert lines == ["outputs: 2 of 5 answers (40%), RATE", "outputs: 4 of 5 answers (80%), RATE",
                     "outputs: 5 of 5 answers (100%), RATE"]
    assert ", done in " in [x for x in proc.stderr.splitlines() if x.startswith("outputs: 5 of 5")][0]


def test_heartbeat_prints_while_the_count_stands_still():
    import time

    out = io.StringIO()
    bar = LogProgress(total=4, desc="generate", unit="instruction", stream=out, every_s=0.2, heartbeat=True)
    time.sleep(0.5)  # no update: a server still working on the first batch
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines and set(lines) == {"generate: 0 of 4 instructions (0%), 0.00 instructions/s"}
    done = io.StringIO()
    bar = LogProgress(total=1, desc="training", unit="step", stream=done, every_s=0.2, heartbeat=True)
    bar.update(1)  # printed at once (0.2 s after the start is not yet due: printed by close at the latest)
    time.sleep(0.5)  # the last evaluation runs: the finished count is not repeated
    bar.close()
    assert len(done.getvalue().splitlines()) == 1


@pytest.mark.parametrize("kind, world, line", [
    ("NO", 1, "training in one process on cpu"),
    ("MULTI_CPU", 2, "training with DDP (MULTI_CPU) over 2 processes on cpu"),
    ("FSDP", 8, "training with FSDP over 8 processes on cpu"),
    ("DEEPSPEED", 4, "training with DeepSpeed over 4 processes on cpu"),
])
def test_the_launch_is_said_in_users_words(kind, world, line):
    from alpaca_lib.training.trainlog import describe_launch

    assert describe_launch(kind, world, "cpu") == line


def test_off_a_terminal_the_trainers_tqdm_bar_gives_way_to_its_log_printer():
    from transformers.trainer_callback import CallbackHandler, PrinterCallback, ProgressCallback

    from alpaca_lib.training.trainlog import log_progress_off_terminal

    class Trainer:  # the two methods of transformers.Trainer the swap uses, over the real CallbackHandler
        def __init__(self, callbacks):
            self.callback_handler = CallbackHandler(callbacks, None, None, None, None)

        def pop_callback(self, callback):
            return self.callback_handler.pop_callback(callback)

        def add_callback(self, callback):
            self.callback_handler.add_callback(callback)

    bar = Trainer([ProgressCallback])
    log_progress_off_terminal(bar, stream=io.StringIO())
    assert [type(c) for c in bar.callback_handler.callbacks] == [PrinterCallback]
    quiet = Trainer([PrinterCallback])  # --disable_tqdm True: nothing to swap
    log_progress_off_terminal(quiet, stream=io.StringIO())
    assert [type(c) for c in quiet.callback_handler.callbacks] == [PrinterCallback]


def test_the_data_reports_rouge_pass_prints_progress(monkeypatch, capsys):
    from alpaca_lib.data import report as datareport

    monkeypatch.setenv(INTERVAL_ENV, "0")
    monkeypatch.setattr(datareport, "_ROUGE_CHUNK", 2)
    rejected = datareport.near_duplicates(["name three colours", "name three colours please", "write a poem",
                                           "sort these numbers", "translate to french"], workers=1)
    assert rejected == 1
    lines = [re.sub(r", [0-9.]+ instructions/s.*", "", x) for x in capsys.readouterr().err.splitlines()]
    assert lines == ["report: near duplicates: 2 of 5 instructions (40%)",
                     "report: near duplicates: 4 of 5 instructions (80%)",
                     "report: near duplicates: 5 of 5 instructions (100%)"]
