"""train.py never finishes quietly wrong: a finished run, a second writer, changed settings, rotation, a full disk.

    bash scripts/test.sh tests/test_train_guards.py

Each case runs train.py's command line, on the tiny LLaMA, for a few steps (2 examples a step, a checkpoint
every 2 steps). Kill points, holds and a file size limit (RLIMIT_FSIZE, which fails a write with EFBIG as a
full disk fails it with ENOSPC) are armed by tests/train_hooks.py. Single-process runs start in the warm
Python (tests/warm_python.py: the imports done once, a forked process per run); the refused resume with
changed settings starts as `python train.py`, and torchrun starts its own interpreters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from alpaca_lib.training.checkpoints import MANIFEST_NAME, list_checkpoints, problem_with
from alpaca_lib.training.start import FINISHED_NAME
from conftest import REPO_ROOT, descendants, with_flags, write_alpaca_subset

TRAIN = str(REPO_ROOT / "train.py")
HOOKS = str(REPO_ROOT / "tests" / "train_hooks.py")
KILL_DURING_SAVE = str(REPO_ROOT / "tests" / "kill_during_save.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    write_alpaca_subset(root / "data.json", slice(24))
    return root


@pytest.fixture(scope="module")
def unloadable_copy(tiny_llama_dir, root):
    """The tiny LLaMA's folder with its weights replaced by as many zero bytes: the same run identity (config
    and weight files' names, sizes and times), but any attempt to load it fails with a traceback."""
    copy = root / "unloadable-model"
    shutil.copytree(tiny_llama_dir, copy)
    for weights in copy.glob("*.safetensors"):
        st = weights.stat()
        weights.write_bytes(b"\0" * st.st_size)
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # the identity counts the time too
    return copy


def _args(model, root: Path, out: Path, *extra) -> list:
    return [
        "--model_name_or_path", str(model), "--data_path", str(root / "data.json"), "--output_dir", str(out),
        "--max_steps", "5", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
        "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "3", "--report_to", "none",
        "--model_max_length", "192", "--preprocessing_cache_dir", str(root / "cache"), "--seed", "0",
        "--disable_tqdm", "True", "--logging_steps", "1",
        # Adam's epsilon at 1e-6, as in test_resume.py: float noise in a near-zero gradient stays noise.
        "--adam_epsilon", "1e-6", *extra,
    ]


def _run(launcher, cmd, cwd, hook=None, expect=None, **env_vars):
    """Runs `cmd` to its end with `launcher` (the `warm` or the `fresh` fixture), unbuffered, a hook armed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"TRAIN_HOOK": hook} if hook else {}), **env_vars}
    proc = launcher.run(cmd, cwd, env=env)
    if expect is not None:
        assert proc.returncode == expect, (proc.stdout + proc.stderr)[-5000:]
    return proc


def _files(folder: Path) -> dict:
    """Every file under `folder` with its SHA-256."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _steps_trained(log: str) -> int:
    return len(re.findall(r"\{'loss': ", log))


def _global_step(out: Path) -> int:
    return json.loads((out / "trainer_state.json").read_text())["global_step"]


# ---- 1. a finished run is finished ----


def test_rerunning_a_finished_run_trains_nothing_and_changes_nothing(tiny_llama_dir, root, warm):
    out = root / "finished"
    args = _args(tiny_llama_dir, root, out)
    warm.run_script([sys.executable, TRAIN, *args], root)
    assert _global_step(out) == 5
    before = _files(out)
    log = warm.run_script([sys.executable, TRAIN, *args], root)
    assert _steps_trained(log) == 0, log[-3000:]
    assert (f"train.py: {out} already holds the final model of this run (step 5); nothing to train. To train it "
            "again from the start, pass --overwrite_output_dir True.") in log
    assert _steps_trained(log) == 0
    assert _files(out) == before  # no checkpoint-6, the same final model, state and marker


def test_a_final_save_killed_midway_is_finished_from_the_last_checkpoint_without_training(tiny_llama_dir, root, warm):
    out = root / "killed-final"
    args = _args(tiny_llama_dir, root, out)
    proc = _run(warm, [sys.executable, HOOKS, TRAIN, *args], root, hook="kill_final")
    assert proc.returncode == -signal.SIGKILL, (proc.stdout + proc.stderr)[-3000:]
    assert not (out / "model.safetensors").exists() and not (out / FINISHED_NAME).exists()
    assert problem_with(out / "checkpoint-5") is None
    log = warm.run_script([sys.executable, TRAIN, *args], root)
    assert f"{out}/checkpoint-5 is the last step of this run (5): saving the final model from it, training nothing." in log
    assert _steps_trained(log) == 0
    assert [s for s, _ in list_checkpoints(out)] == [2, 4, 5]
    assert _global_step(out) == 5
    final, saved = load_file(out / "model.safetensors"), load_file(out / "checkpoint-5" / "model.safetensors")
    assert final.keys() == saved.keys() and all(final[k].equal(saved[k]) for k in saved)
    assert json.loads((out / FINISHED_NAME).read_text())["step"] == 5
    log = warm.run_script([sys.executable, TRAIN, *args], root)
    assert "already holds the final model of this run (step 5); nothing to train" in log


# ---- 2. one writer per training folder ----


def _start_holding(launcher, cmd, cwd, step: int):
    """Starts `cmd` with `launcher` under the hold hook; returns the process once it holds at `step` (every
    rank's line seen)."""
    proc = launcher.popen(cmd, cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", "TRAIN_HOOK": f"hold:{step}"})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("HOLDING"):
            return proc, lines
    raise AssertionError("the run ended before it held:\n" + "".join(lines)[-4000:])


def _stop(proc) -> None:
    """SIGKILLs `proc` and everything under it (torchrun's workers run in sessions of their own)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _lock_holder_pid(out: Path) -> int:
    return json.loads((out / ".alpaca.lock").read_text())["pid"]


@pytest.mark.parametrize("first", ["single", "torchrun"])
def test_a_second_run_on_the_same_output_dir_is_refused_naming_the_first(first, tiny_llama_dir, root, warm, fresh):
    """The first run holds the lock once for its whole job (under torchrun: rank 0 for both processes)."""
    out = root / f"locked-{first}"
    args = _args(tiny_llama_dir, root, out)
    launcher = [sys.executable, HOOKS] if first == "single" else [*TORCHRUN, HOOKS]
    holder, lines = _start_holding(warm if first == "single" else fresh, [*launcher, TRAIN, *args], root, step=3)
    try:
        before = {s for s, _ in list_checkpoints(out)}
        proc = _run(warm, [sys.executable, TRAIN, *args], root, expect=1)
        pid = _lock_holder_pid(out)
        if first == "single":
            assert pid == holder.pid
        else:  # rank 0's worker, not the launcher, and the job did not refuse itself
            assert pid != holder.pid and b"RANK=0" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert re.search(
            rf"error: {re.escape(str(out))} is in use by pid {pid} on {re.escape(socket.gethostname())} \(train\.py, "
            r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); only one run may write to it at a time\.", proc.stderr)
        assert "Traceback" not in proc.stderr and "resuming from" not in proc.stderr
        assert {s for s, _ in list_checkpoints(out)} == before == {2}
    finally:
        _stop(holder)
    if first == "single":  # the lock went with the killed holder: the same command now resumes
        log = warm.run_script([sys.executable, TRAIN, *args], root)
        assert f"resuming from {out}/checkpoint-2 (step 2)" in log


# ---- 3. a resume refuses changed settings that change the result ----


@pytest.fixture(scope="module")
def checkpoint_2(tiny_llama_dir, root, warm):
    """checkpoint-2 of a 5-step run (linear schedule, batch 2, one process)."""
    out = root / "settings-source"
    proc = _run(warm, [sys.executable, HOOKS, TRAIN, *_args(tiny_llama_dir, root, out)], root, hook="kill_final")
    assert proc.returncode == -signal.SIGKILL
    return out / "checkpoint-2"


def _out_with(checkpoint: Path, out: Path) -> Path:
    shutil.copytree(checkpoint, out / checkpoint.name)
    return out


def test_a_resume_with_settings_that_change_the_result_is_refused_before_the_model_loads(
        checkpoint_2, unloadable_copy, root, fresh):
    out = _out_with(checkpoint_2, root / "changed")
    changed = with_flags(_args(unloadable_copy, root, out), learning_rate="2e-3", lr_scheduler_type="cosine",
                    warmup_steps=1, adam_beta2=0.99, weight_decay=0.1, per_device_train_batch_size=4, seed=1,
                    max_steps=7, packing="True", model_max_length=256, drop_truncated_responses="True",
                    lora_r=4)
    proc = _run(fresh, [sys.executable, TRAIN, *changed], root, expect=1)
    err = proc.stderr
    assert "Traceback" not in err, err[-3000:]
    assert err.count("\nerror: ") + err.startswith("error: ") == 1
    line = err[err.index("error: "):].splitlines()[0]
    assert line.startswith(f"error: {out}/checkpoint-2 was trained with other settings, and resuming would mix the "
                           "two runs: ")
    for change in ["--learning_rate 0.001 -> 0.002", "--lr_scheduler_type linear -> cosine",
                   "--warmup_steps / --warmup_ratio 0 -> 1", "--adam_beta2 0.999 -> 0.99",
                   "--weight_decay 0.0 -> 0.1", "--seed 0 -> 1", "--packing False -> True",
                   "--model_max_length 192 -> 256", "--drop_truncated_responses False -> True", "--lora_r 0 -> 4",
                   "effective batch (--per_device_train_batch_size x --gradient_accumulation_steps x processes) "
                   "2 (2 x 1 x 1) -> 4 (4 x 1 x 1)", "--max_steps 5 -> 7"]:
        assert change in line, change
    assert "a run can be extended only with --lr_scheduler_type constant" in line
    assert line.endswith("Fix: run with the old settings to resume, or pass --overwrite_output_dir True to start "
                         "afresh with the new ones (it deletes the checkpoints and the final model's marker).")
    assert [s for s, _ in list_checkpoints(out)] == [2] and not (out / ".alpaca.lock").exists()


def test_a_resume_compares_the_precision_that_bf16_auto_chose(checkpoint_2, unloadable_copy, tiny_llama_dir, root,
                                                              fresh, monkeypatch, tmp_path):
    """checkpoint-2 trained in float32. Where `--bf16 auto` picks bf16, resuming it is refused, naming the change;
    where it picks float32 (oneDNN capped at AVX2 makes bf16 emulated for real), the same command resumes."""
    import torch

    from alpaca_lib.core import precision
    from conftest import run_train_expecting_error

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "_cpu_timings", lambda: {"float32": 1.0, "bfloat16": 0.4, "float16": 25.0})
    monkeypatch.setattr(precision, "cpu_features", lambda: "AMX")
    out = _out_with(checkpoint_2, root / "auto-native")
    stderr = run_train_expecting_error(tmp_path, with_flags(_args(unloadable_copy, root, out), bf16="auto"), output_dir=out)
    assert "train.py: --bf16 auto: bf16 mixed precision, since this CPU runs bf16 natively" in stderr
    line = stderr[stderr.index("error: "):].splitlines()[0]
    assert line.startswith(f"error: {out}/checkpoint-2 was trained with other settings, and resuming would mix the "
                           "two runs: --bf16 False -> True")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return  # ONEDNN_MAX_CPU_ISA caps x86 CPUs only
    out = _out_with(checkpoint_2, root / "auto-emulated")
    proc = _run(fresh, [sys.executable, TRAIN, *with_flags(_args(tiny_llama_dir, root, out), bf16="auto")], root,
                expect=0, ONEDNN_MAX_CPU_ISA="AVX2")
    assert "train.py: --bf16 auto: float32, since this CPU only emulates bf16" in proc.stderr
    assert f"resuming from {out}/checkpoint-2 (step 2)" in proc.stdout + proc.stderr
    assert _global_step(out) == 5


def test_a_resume_on_more_processes_is_refused(checkpoint_2, unloadable_copy, root, fresh):
    out = _out_with(checkpoint_2, root / "more-processes")
    proc = _run(fresh, [*TORCHRUN, TRAIN, *_args(unloadable_copy, root, out)], root)
    assert proc.returncode != 0
    assert ("resuming would mix the two runs: effective batch (--per_device_train_batch_size x "
            "--gradient_accumulation_steps x processes) 2 (2 x 1 x 1) -> 4 (2 x 1 x 2).") in proc.stderr


def test_settings_that_do_not_change_the_result_may_change_on_a_resume(checkpoint_2, tiny_llama_dir, root, warm):
    out = _out_with(checkpoint_2, root / "free")
    args = with_flags(_args(tiny_llama_dir, root, out), logging_steps=2, save_steps=3, save_total_limit=1,
                 dataloader_num_workers=1, per_device_train_batch_size=1, gradient_accumulation_steps=2)
    log = warm.run_script([sys.executable, TRAIN, *args], root)
    assert f"resuming from {out}/checkpoint-2 (step 2)" in log
    assert _global_step(out) == 5


def test_a_finished_constant_rate_run_is_extended_as_a_longer_run_would_end(tiny_llama_dir, root, warm):
    args = lambda out, steps: with_flags(_args(tiny_llama_dir, root, out), lr_scheduler_type="constant",  # noqa: E731
                                    max_steps=steps)
    extended, longer = root / "extended", root / "longer"
    warm.run_script([sys.executable, TRAIN, *args(extended, 4)], root)
    log = warm.run_script([sys.executable, TRAIN, *args(extended, 6)], root)
    assert ("extending the run from --max_steps 4 to 6: with a constant learning rate the steps already taken are "
            "those of a run of --max_steps 6, so it ends as that run would") in log
    assert f"resuming from {extended}/checkpoint-4 (step 4)" in log
    assert _steps_trained(log) == 2 and _global_step(extended) == 6
    warm.run_script([sys.executable, TRAIN, *args(longer, 6)], root)
    got, want = load_file(extended / "model.safetensors"), load_file(longer / "model.safetensors")
    for name in want:
        assert (got[name] - want[name]).abs().max() < 1e-5, name
    # The same extension of a linear schedule is refused (the first test above lists the message).


# ---- 4. rotation never leaves a run without a complete checkpoint ----


def test_rotation_after_resuming_an_older_checkpoint_keeps_the_runs_own_newest(tiny_llama_dir, root, warm):
    out = root / "rotation"
    args = with_flags(_args(tiny_llama_dir, root, out), max_steps=8)
    warm.run_script([sys.executable, TRAIN, *args], root)
    assert [s for s, _ in list_checkpoints(out)] == [4, 6, 8]
    # Resumed from checkpoint-4 with a limit of 1, killed while saving checkpoint-8: the run's own checkpoint-6
    # must survive (checkpoint-8 of the earlier run is not this run's newer one).
    resumed = with_flags(args, resume_from_checkpoint=out / "checkpoint-4", save_total_limit=1)
    proc = _run(warm, [sys.executable, KILL_DURING_SAVE, TRAIN, *resumed], root, KILL_DURING_SAVE="8:rng")
    assert proc.returncode == -signal.SIGKILL, (proc.stdout + proc.stderr)[-3000:]
    assert [s for s, _ in list_checkpoints(out)] == [6, 8]
    assert problem_with(out / "checkpoint-6") is None and "did not finish" in problem_with(out / "checkpoint-8")
    log = warm.run_script([sys.executable, TRAIN, *args], root)
    assert f"resuming from {out}/checkpoint-6 (step 6)" in log
    assert _global_step(out) == 8


# ---- 6. a full disk is one line ----


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_previous_checkpoint(tiny_llama_dir, root, warm):
    out = root / "full-checkpoint"
    args = _args(tiny_llama_dir, root, out)
    proc = _run(warm, [sys.executable, HOOKS, TRAIN, *args], root, hook="fsize:4:4096", expect=1)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.rstrip().splitlines()[-1] == (
        f"error: no space left on device while writing {out}/checkpoint-4 (file size limit reached); the previous "
        f"complete checkpoint, {out}/checkpoint-2, is intact (the same command resumes from it). Free some space "
        "(or choose a folder on a disk with more room) and run the same command again.")
    assert [s for s, _ in list_checkpoints(out)] == [2] and problem_with(out / "checkpoint-2") is None
    log = warm.run_script([sys.executable, TRAIN, *args], root)
    assert f"resuming from {out}/checkpoint-2 (step 2)" in log and _global_step(out) == 5


def test_a_full_disk_during_the_final_save_is_one_line_and_the_rerun_only_saves(tiny_llama_dir, root, warm):
    out = root / "full-final"
    args = _args(tiny_llama_dir, root, out)
    proc = _run(warm, [sys.executable, HOOKS, TRAIN, *args], root, hook="fsize:final:4096", expect=1)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.rstrip().splitlines()[-1] == (
        f"error: no space left on device while writing {out} (file size limit reached); the files already in {out} "
        f"are as they were, and the trained weights are kept in {out}/checkpoint-5: once there is space, the same "
        "command saves the final model from it without training. Free some space (or choose a folder on a disk "
        "with more room) and run the same command again.")
    assert not (out / "model.safetensors").exists() and not (out / ".final-model.partial").exists()
    log = warm.run_script([sys.executable, TRAIN, *args], root)
    assert "saving the final model from it, training nothing" in log and _steps_trained(log) == 0
    assert (out / "model.safetensors").is_file() and (out / FINISHED_NAME).is_file()


def test_a_full_disk_while_writing_the_preprocessing_cache_is_named_and_training_data_still_comes(
        tiny_llama_dir, root, tmp_path):
    """The cache is an optimisation: a full disk there is a warning with the standard wording, not a stop."""
    script = f"""
import logging, resource, signal, sys
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from transformers import AutoTokenizer
from alpaca_lib.data.cache import encode_file
tok = AutoTokenizer.from_pretrained({str(tiny_llama_dir)!r}, model_max_length=192)
tok.add_special_tokens({{"pad_token": "[PAD]"}})
plain = encode_file({str(root / "data.json")!r}, tok)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
data = encode_file({str(root / "data.json")!r}, tok, cache_dir={str(tmp_path / "cache")!r})
print(data.stats["cache"], len(data), len(plain), bool((data.input_ids == plain.input_ids).all()))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(json.loads((root / "data.json").read_text()))
    kept = proc.stdout.split()
    assert kept[0] == "miss" and kept[1] == kept[2] and int(kept[1]) <= n and kept[3] == "True"
    assert re.search(rf"no space left on device while writing {re.escape(str(tmp_path / 'cache'))}/\w+\.bin "
                     r"\(file size limit reached\); going on without the preprocessing cache", proc.stderr)
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written entry or temporary file left


def test_rotation_bounded_by_the_step_just_written_leaves_later_checkpoints_alone(tmp_path):
    from alpaca_lib.training.checkpoints import rotate

    for step in (2, 4, 6, 8):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "w").write_bytes(b"w" * step)
        (folder / MANIFEST_NAME).write_text(json.dumps({"step": step, "files": {"w": step}}))
    rotate(tmp_path, keep=1, upto=6)  # the run resumed from 4 has just written 6; 8 is the earlier run's
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6, 8]
    rotate(tmp_path, keep=1)  # unbounded, as before: the newest complete one wins
    assert [s for s, _ in list_checkpoints(tmp_path)] == [8]


def test_disk_full_reason_reads_errno_chained_errors_and_writers_messages(tmp_path):
    import errno

    from alpaca_lib.core.fileio import disk_full_reason

    assert disk_full_reason(OSError(errno.ENOSPC, "No space left on device")) == "no space left"
    assert disk_full_reason(OSError(errno.EDQUOT, "Disk quota exceeded")) == "disk quota exceeded"
    try:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError:
            raise RuntimeError("saving failed")
    except RuntimeError as e:
        assert disk_full_reason(e) == "file size limit reached"
    assert disk_full_reason(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")) \
        == "no space left"
    assert disk_full_reason(OSError(errno.EACCES, "Permission denied")) is None
    # torch.save's stream error says nothing; with room on the disk and no size limit, it is not a full disk.
    assert disk_full_reason(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
                            tmp_path) is None


def test_a_really_full_disk_during_a_checkpoint_save_is_one_line(tiny_llama_dir, root, tmp_path, warm):
    """On a 4 MiB tmpfs (needs root to mount; skipped otherwise): checkpoint-2 fits, checkpoint-4 does not, and
    torch.save's own error there says only `basic_ios::clear: iostream error`."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "out"
        args = with_flags(_args(tiny_llama_dir, root, out), save_total_limit=1)
        proc = _run(warm, [sys.executable, TRAIN, *args], root, expect=1)
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.rstrip().splitlines()[-1] == (
            f"error: no space left on device while writing {out}/checkpoint-4; the previous complete checkpoint, "
            f"{out}/checkpoint-2, is intact (the same command resumes from it). Free some space (or choose a folder "
            "on a disk with more room) and run the same command again.")
        assert [s for s, _ in list_checkpoints(out)] == [2] and problem_with(out / "checkpoint-2") is None
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        log = warm.run_script([sys.executable, TRAIN, *args], root)
        assert f"resuming from {out}/checkpoint-2 (step 2)" in log and _global_step(out) == 5
    finally:
        subprocess.run(["umount", str(disk)], check=True)
