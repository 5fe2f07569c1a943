"""Training killed at a random moment resumes and ends with the weights of a run never interrupted.

    bash scripts/test.sh tests/test_resume.py

Each case trains a tiny LLaMA for about 30 optimizer steps over 2 epochs, saving every 6 steps. The run is
killed (SIGKILL to its whole process group, as when a node is lost) at a random step after its first
checkpoint, or stopped with SIGTERM, and then the same command is run again. The per-step loss log must
equal that of an uninterrupted run with the same seed (relative 1e-6), and so must the final weights
(absolute 1e-5 at a learning rate of 1e-3). The resumed run repeats the same operations and usually
matches bit for bit, but not always on a loaded machine, and with Adam's default epsilon (1e-8) float
noise in a near-zero gradient can flip a whole update step (1e-3) of one weight: the runs here use an
epsilon of 1e-6, which keeps Adam's state (and so tests its restoration) without that amplification.
A wrong batch order or a lost optimizer state moves weights and losses by whole steps. The step at which
a run is killed is random and shown in every failure message.

Single-process runs start in the warm Python (tests/warm_python.py: the imports done once, a forked process
per run), except the faithful mode's killed and resumed runs and the SIGTERM stop, which start as
`python train.py`; torchrun starts its own interpreters.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alpaca_lib.training.checkpoints import MANIFEST_NAME, list_checkpoints, problem_with, rotate
from alpaca_lib.training.run import PREEMPTED_EXIT_CODE
from conftest import REPO_ROOT, descendants, logged_steps, run_train_expecting_error, write_alpaca_subset

TRAIN = str(REPO_ROOT / "train.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
SAVE_STEPS = 6
_LOSS_LINE = re.compile(r"\{'loss': ")

MODES = {
    # An evaluation split rides along with the faithful path: held-out examples and eval losses resume too.
    "faithful": ["--val_set_size", "4", "--evaluation_strategy", "steps", "--eval_steps", "6"],
    "group_by_length": ["--group_by_length", "True"],
    "packing": ["--packing", "True", "--model_max_length", "384"],
    "lora": ["--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.1"],
}


def _args(model_dir, data, out, cache, extra=(), per_device=2):
    return [
        "--model_name_or_path", str(model_dir), "--data_path", str(data), "--output_dir", str(out),
        "--num_train_epochs", "2", "--per_device_train_batch_size", str(per_device), "--learning_rate", "1e-3",
        "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS),
        "--save_total_limit", "2", "--report_to", "none", "--model_max_length", "192",
        "--preprocessing_cache_dir", str(cache), "--seed", "0", "--disable_tqdm", "True",
        # Adam's epsilon at 1e-6 instead of 1e-8: the same optimizer state to restore, but float noise in a
        # near-zero gradient no longer becomes a full step (see the module docstring).
        "--adam_epsilon", "1e-6", *extra,
    ]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


# The modes whose runs start in a new interpreter (the `fresh` launcher): torchrun, and one single-process mode
# as users run it.
FRESH = {"faithful", "ddp"}


def _run_and_signal(launcher, cmd, cwd, out: Path, at_step: int, sig: int, target: str = "all"):
    """Starts `cmd` with `launcher` (the `warm` or the `fresh` fixture); once it has a complete checkpoint and
    has logged `at_step` steps, sends `sig`.

    `target`: "all" signals the launched process and every process under it (SIGKILL: the node is lost;
    torchrun's workers run in sessions of their own, so a process group would miss them), "launcher" the
    launched process only (a scheduler's SIGTERM), "rank1" the torchrun worker of rank 1 only.
    Returns (exit code, log).
    """
    proc = launcher.popen(cmd, cwd, env=_env())
    lines, steps, sent = [], 0, False
    for line in proc.stdout:
        lines.append(line)
        steps += bool(_LOSS_LINE.match(line))
        if not sent and steps >= at_step and any((p / MANIFEST_NAME).exists() for _, p in list_checkpoints(out)):
            if target == "all":
                for pid in [proc.pid, *descendants(proc.pid)]:
                    os.kill(pid, sig)
            elif target == "launcher":
                os.kill(proc.pid, sig)
            else:
                os.kill(_worker_with_rank(proc.pid, 1), sig)
            sent = True
    code = proc.wait(timeout=600)
    assert sent, f"the run ended before step {at_step}:\n" + "".join(lines)[-4000:]
    return code, "".join(lines)


def _weights(out: Path, lora: bool):
    files = [out / "model.safetensors"] + ([out / "adapter" / "adapter_model.safetensors"] if lora else [])
    return {f"{f.relative_to(out)}:{k}": v for f in files for k, v in load_file(f).items()}


def _loss_log(out: Path):
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(h["step"], h["loss"]) for h in history if "loss" in h], [
        (h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]


def _assert_same_run(out: Path, ref: Path, lora: bool, context: str):
    train_log, eval_log = _loss_log(out)
    ref_train, ref_eval = _loss_log(ref)
    assert [s for s, _ in ref_train] == list(range(1, len(ref_train) + 1))
    assert [s for s, _ in train_log] == [s for s, _ in ref_train], context  # no step repeated or missing
    assert [loss for _, loss in train_log] == pytest.approx([loss for _, loss in ref_train], rel=1e-6), context
    assert [s for s, _ in eval_log] == [s for s, _ in ref_eval], context
    assert [loss for _, loss in eval_log] == pytest.approx([loss for _, loss in ref_eval], rel=1e-6), context
    got, want = _weights(out, lora), _weights(ref, lora)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4,
                                   msg=lambda m: f"{context}: {name}: {m}")


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    # 36 records: 32 to train on once the faithful mode holds 4 out; the others train on 32 of them.
    data = write_alpaca_subset(root / "data.json", slice(36))
    data32 = write_alpaca_subset(root / "data32.json", slice(32))
    return root, data, data32


@pytest.fixture(scope="module")
def reference(setup, tiny_llama_dir, warm, fresh):
    """One uninterrupted run per mode, made on first use."""
    root, data, data32 = setup
    done = {}

    def get(mode):
        if mode not in done:
            out = root / f"ref-{mode}"
            d = data if mode == "faithful" else data32
            extra = MODES.get(mode, [])
            if mode == "ddp":
                fresh.run_script([*TORCHRUN, TRAIN, *_args(tiny_llama_dir, data32, out, root / "cache", per_device=1)],
                                 root)
            else:
                warm.run_script([sys.executable, TRAIN, *_args(tiny_llama_dir, d, out, root / "cache", extra)], root)
            done[mode] = out
        return done[mode]

    return get


def _resume_command(mode, tiny_llama_dir, setup, out):
    root, data, data32 = setup
    if mode == "ddp":
        return [*TORCHRUN, TRAIN, *_args(tiny_llama_dir, data32, out, root / "cache", per_device=1)]
    d = data if mode == "faithful" else data32
    return [sys.executable, TRAIN, *_args(tiny_llama_dir, d, out, root / "cache", MODES[mode])]


def _resumed_step(log: str, context: str) -> int:
    """The step the log says the run resumed from (and that it names the matching folder)."""
    found = re.findall(r"resuming from (\S+) \(step (\d+)\)", log)
    assert found, context + "\n" + log[-3000:]
    path, step = found[0]
    assert Path(path).name == f"checkpoint-{step}", context
    return int(step)


def _steps(out: Path) -> int:
    return json.loads((out / "trainer_state.json").read_text())["global_step"]


def _assert_resumed(log: str, out: Path, ref: Path, lora: bool, context: str, afresh: bool = False) -> int:
    """Checks the run that `log` is of: it resumed from the checkpoint it names (`afresh`: from none), trained only
    the steps after it (one loss line per optimizer step), and ended as the uninterrupted run `ref` did.

    Returns:
        The step it resumed from (0 afresh).
    """
    step = 0 if afresh else _resumed_step(log, context)
    assert afresh == ("resuming from" not in log), context
    logged = logged_steps(log)
    assert logged == _steps(ref) - step, f"{context}: resumed at step {step} of {_steps(ref)} but trained {logged} steps"
    _assert_same_run(out, ref, lora, context)
    return step


@pytest.mark.parametrize("mode", [*MODES, "ddp"])
def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(mode, setup, reference, tiny_llama_dir,
                                                                          warm, fresh):
    root = setup[0]
    launcher = fresh if mode in FRESH else warm
    ref = reference(mode)
    total = _steps(ref)
    # group_by_length draws a new order each epoch: kill in the second epoch, where a resume has to
    # reproduce that epoch's order.
    low = total // 2 + 1 if mode == "group_by_length" else SAVE_STEPS
    at_step = random.Random(f"{mode}-{time.time_ns()}").randint(low, total - 4)
    context = f"mode={mode}, killed after step {at_step} of {total}"
    out = root / f"killed-{mode}"
    cmd = _resume_command(mode, tiny_llama_dir, setup, out)
    code, log = _run_and_signal(launcher, cmd, root, out, at_step, signal.SIGKILL)
    assert code == -signal.SIGKILL, context + "\n" + log[-3000:]
    assert not (out / "trainer_state.json").exists(), context  # it never reached the end
    step = _assert_resumed(launcher.run_script(cmd, root), out, ref, mode == "lora", context)
    assert SAVE_STEPS <= step <= at_step + 2 and step % SAVE_STEPS == 0, context


def test_sigterm_saves_at_the_step_end_exits_143_and_resumes(setup, reference, tiny_llama_dir, fresh):
    """As users run it (`python train.py`, not the warm Python): the handler, the save and the exit status."""
    root = setup[0]
    ref = reference("group_by_length")
    out = root / "sigterm"
    cmd = _resume_command("group_by_length", tiny_llama_dir, setup, out)
    at_step = random.Random(time.time_ns()).randint(SAVE_STEPS + 1, _steps(ref) - 6)
    context = f"SIGTERM after step {at_step}"
    code, log = _run_and_signal(fresh, cmd, root, out, at_step, signal.SIGTERM, target="launcher")
    assert code == PREEMPTED_EXIT_CODE == 143, context + "\n" + log[-3000:]
    stopped = re.findall(r"train\.py: stopped by SIGTERM: saved (\S+)/checkpoint-(\d+) at step (\d+)\. "
                         r"Run the same command again to resume from it\.", log)
    assert stopped, context + "\n" + log[-3000:]
    step = int(stopped[0][1])
    assert stopped[0][2] == str(step) and at_step <= step <= at_step + 3, context
    assert problem_with(out / f"checkpoint-{step}") is None, context
    # The checkpoint holds the state at the end of that step.
    assert json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())["global_step"] == step
    assert _assert_resumed(fresh.run_script(cmd, root), out, ref, False, context) == step


@pytest.mark.parametrize("target", [pytest.param("launcher", marks=pytest.mark.slow), "rank1"])
def test_sigterm_under_torchrun_stops_both_processes_at_one_step(target, setup, reference, tiny_llama_dir, fresh):
    """Signalled through torchrun, or, as a scheduler signalling processes one by one might, at rank 1 only.
    Through torchrun with the slow tests (about 45 s; torchrun passes the signal on to both processes, as it does for
    one node of two in test_multinode.py's SIGTERM test)."""
    root = setup[0]
    ref = reference("ddp")
    out = root / f"sigterm-ddp-{target}"
    cmd = _resume_command("ddp", tiny_llama_dir, setup, out)
    at_step = random.Random(time.time_ns()).randint(SAVE_STEPS + 1, _steps(ref) - 6)
    context = f"SIGTERM to {target} after step {at_step}"
    code, log = _run_and_signal(fresh, cmd, root, out, at_step, signal.SIGTERM, target=target)
    assert code != 0, context + "\n" + log[-3000:]
    step, folder = list_checkpoints(out)[-1]
    assert at_step <= step <= at_step + 3 and problem_with(folder) is None, context + "\n" + log[-3000:]
    # Both processes wrote their part of the same step's checkpoint.
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in folder.iterdir()}, context
    assert _assert_resumed(fresh.run_script(cmd, root), out, ref, False, context) == step


def _worker_with_rank(launcher_pid: int, rank: int) -> int:
    for pid in descendants(launcher_pid):
        with contextlib.suppress(OSError):
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return pid
    raise AssertionError(f"no process with RANK={rank} under {launcher_pid}")


@pytest.mark.parametrize("where", ["rng", "manifest"])
def test_killed_during_a_save_resumes_from_the_previous_complete_checkpoint(where, setup, reference, tiny_llama_dir,
                                                                            warm):
    root, _, data32 = setup
    out = root / f"killed-saving-{where}"
    args = _args(tiny_llama_dir, data32, out, root / "cache", MODES["lora"])
    args[args.index("--save_total_limit") + 1] = "1"
    launcher = str(REPO_ROOT / "tests" / "kill_during_save.py")
    proc = warm.run([sys.executable, launcher, TRAIN, *args], root, env={**_env(), "KILL_DURING_SAVE": f"12:{where}"})
    assert proc.returncode == -signal.SIGKILL, (proc.stdout + proc.stderr)[-3000:]
    # With --save_total_limit 1, checkpoint-6 is still there and complete: rotation waits for the manifest.
    assert [s for s, _ in list_checkpoints(out)] == [6, 12]
    assert problem_with(out / "checkpoint-6") is None
    assert "did not finish" in problem_with(out / "checkpoint-12")
    log = warm.run_script([sys.executable, TRAIN, *args], root)
    assert f"not resuming from {out}/checkpoint-12: it has no {MANIFEST_NAME}: its save did not finish" in log
    assert _assert_resumed(log, out, reference("lora"), True, f"killed while saving ({where})") == 6
    assert [s for s, _ in list_checkpoints(out)] == [_steps(out)]


def test_truncated_checkpoint_file_is_reported_and_the_previous_one_used(setup, reference, tiny_llama_dir, warm):
    root, _, data32 = setup
    ref = reference("packing")
    out = root / "truncated"
    out.mkdir()
    # The two checkpoints the reference run kept (--save_total_limit 2), the newer one then damaged.
    (older, _), (newer, _) = [(step, shutil.copytree(p, out / p.name)) for step, p in list_checkpoints(ref)]
    optimizer = out / f"checkpoint-{newer}" / "optimizer.pt"
    size = optimizer.stat().st_size
    with open(optimizer, "r+b") as f:
        f.truncate(size // 2)
    log = warm.run_script([sys.executable, TRAIN, *_args(tiny_llama_dir, data32, out, root / "cache",
                                                          MODES["packing"])], root)
    assert (f"not resuming from {out}/checkpoint-{newer}: optimizer.pt has {size // 2} bytes, but {size} were "
            "written (truncated or damaged)") in log
    assert _assert_resumed(log, out, ref, False, "truncated optimizer.pt") == older


def test_overwrite_output_dir_starts_afresh_and_deletes_old_checkpoints(setup, reference, tiny_llama_dir, warm):
    root, _, data32 = setup
    ref = reference("packing")
    out = root / "overwrite"
    out.mkdir()
    step, folder = list_checkpoints(ref)[-1]
    shutil.copytree(folder, out / folder.name)
    args = _args(tiny_llama_dir, data32, out, root / "cache", MODES["packing"])
    args[args.index("--save_strategy") + 1] = "no"
    log = warm.run_script([sys.executable, TRAIN, *args, "--overwrite_output_dir", "True"], root)
    assert f"--overwrite_output_dir: deleting {out}/checkpoint-{step}" in log
    assert list_checkpoints(out) == []
    _assert_resumed(log, out, ref, False, "--overwrite_output_dir", afresh=True)


def test_explicit_resume_path_and_flag_errors_come_before_the_model(tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    err = run_train_expecting_error(tmp_path, ["--data_path", str(data), "--resume_from_checkpoint",
                                               str(tmp_path / "nope")])
    assert f"error: --resume_from_checkpoint {tmp_path / 'nope'}: no such folder." in err
    err = run_train_expecting_error(tmp_path, ["--data_path", str(data), "--resume_from_checkpoint", "True"])
    assert f"error: --resume_from_checkpoint True: no complete checkpoint in {tmp_path / 'out'}." in err
    err = run_train_expecting_error(tmp_path, ["--data_path", str(data), "--resume_from_checkpoint", "True",
                                               "--overwrite_output_dir", "True"])
    assert "error: --resume_from_checkpoint and --overwrite_output_dir True both given" in err
    broken = tmp_path / "ckpt" / "checkpoint-4"
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_bytes(b"xx")
    (broken / MANIFEST_NAME).write_text(json.dumps({"step": 4, "files": {"model.safetensors": 10}}))
    err = run_train_expecting_error(tmp_path, ["--data_path", str(data), "--resume_from_checkpoint", str(broken)])
    assert (f"error: --resume_from_checkpoint {broken}: model.safetensors has 2 bytes, but 10 were written "
            "(truncated or damaged). Pick an earlier checkpoint.") in err


def _fake_checkpoint(root: Path, step: int, complete: bool) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * step)
    if complete:
        (folder / MANIFEST_NAME).write_text(json.dumps({"step": step, "files": {"model.safetensors": step}}))
    return folder


def test_rotation_keeps_the_newest_complete_checkpoints_only_deleting_older_folders(tmp_path):
    for step, complete in [(2, True), (4, False), (6, True), (8, True), (10, False)]:
        _fake_checkpoint(tmp_path, step, complete)
    rotate(tmp_path, keep=1)
    # checkpoint-10 is newer than the newest complete one: left for the run to overwrite.
    assert [s for s, _ in list_checkpoints(tmp_path)] == [8, 10]
    rotate(tmp_path, keep=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [8, 10]
    other = tmp_path / "other"
    for step, complete in [(2, True), (4, True), (6, False)]:
        _fake_checkpoint(other, step, complete)
    rotate(other, keep=2, protect=str(other / "checkpoint-2"))
    assert [s for s, _ in list_checkpoints(other)] == [2, 4, 6]
    rotate(other, keep=1, protect=None)
    assert [s for s, _ in list_checkpoints(other)] == [4, 6]
    only_incomplete = tmp_path / "incomplete"
    _fake_checkpoint(only_incomplete, 2, False)
    _fake_checkpoint(only_incomplete, 4, False)
    rotate(only_incomplete, keep=1)
    assert [s for s, _ in list_checkpoints(only_incomplete)] == [2, 4]
