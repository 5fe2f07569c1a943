"""What the commands' writers leave on disk: file permissions, `~` in path flags, full disks.

    .venv/bin/python -m pytest tests/test_writers.py -q
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, write_alpaca_subset


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_follow_the_umask(tmp_path, umask, expected):
    """Files written atomically (through a private temporary file) get what a plain open would give them."""
    items = [{"instruction": "Name a color.", "input": "", "output": "Blue."}]
    (tmp_path / "regen.json").write_text(json.dumps(items))
    proc = subprocess.run([sys.executable, "-m", "generate_instruction", "to_alpaca", "--input_path",
                           str(tmp_path / "regen.json"), "--output_path", str(tmp_path / "out" / "alpaca.json")],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
                          preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "alpaca.json").read_text()) == items
    assert _mode(tmp_path / "out" / "alpaca.json") == expected
    assert _mode(tmp_path / "out") == 0o777 & ~umask


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): _mode(p) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("umask, lora", [(0o022, False), (0o027, True)])
def test_saved_weights_and_checkpoints_follow_the_umask(tmp_path, tiny_llama_dir, umask, lora):
    """train.py's final model, every checkpoint and the LoRA adapter: model.safetensors and
    adapter_model.safetensors get the mode of every other file (safetensors writes them 0600)."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), "--model_name_or_path", str(tiny_llama_dir),
           "--data_path", str(write_alpaca_subset(tmp_path / "data.json", slice(0, 8))), "--output_dir", str(out),
           "--max_steps", "2", "--per_device_train_batch_size", "2", "--save_strategy", "steps", "--save_steps", "1",
           "--report_to", "none", "--model_max_length", "128", "--preprocessing_cache_dir", str(tmp_path / "cache"),
           "--disable_tqdm", "True"]
    if lora:
        cmd += ["--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr[-4000:]
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    expected_weights = ["model.safetensors", f"checkpoint-1/{weights}", f"checkpoint-2/{weights}"]
    if lora:
        expected_weights.append("adapter/adapter_model.safetensors")
    modes = _modes(out)
    assert sorted(name for name in modes if name.endswith(".safetensors")) == sorted(expected_weights)
    folders = {"adapter", "checkpoint-1", "checkpoint-2"} if lora else {"checkpoint-1", "checkpoint-2"}
    assert modes == {name: (0o777 if name in folders else 0o666) & ~umask for name in modes}


def test_staged_and_published_safetensors_follow_the_umask(tmp_path):
    """The bundled model and weight_diff write through `staging_dir`, train.py's final save through `publish`:
    a safetensors file written into either ends up with a plain file's mode."""
    script = """if True:
        import sys, torch
        from pathlib import Path
        from safetensors.torch import save_file
        from alpaca_lib.core.fileio import publish, staging_dir
        root = Path(sys.argv[1])
        with staging_dir(root / "staged") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
            (tmp / "sub").mkdir()
            save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "adapter_model.safetensors"))
        (root / "src" / "adapter").mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(root / "src" / "model.safetensors"))
        save_file({"w": torch.zeros(2)}, str(root / "src" / "adapter" / "adapter_model.safetensors"))
        publish(root / "src", root / "published")
    """
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120, preexec_fn=lambda: os.umask(0o027))
    assert proc.returncode == 0, proc.stderr
    assert _modes(tmp_path / "staged") == {"model.safetensors": 0o640, "sub": 0o750, "sub/adapter_model.safetensors": 0o640}
    assert _modes(tmp_path / "published") == {"adapter": 0o750, "adapter/adapter_model.safetensors": 0o640,
                                              "model.safetensors": 0o640}


def _home_and_runner(tmp_path):
    """A fresh $HOME and a working folder; `run(*argv)` runs Python there with that $HOME and returns stdout."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    home.mkdir()

    def run(*cmd: str) -> str:
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=work, timeout=300,
                              env={**os.environ, "HOME": str(home)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    return home, work, run


RECORDS = [{"instruction": f"Say {w}.", "input": "", "output": f"{w}!"} for w in ("hi", "bye")]


def test_tilde_in_data_and_evaluation_paths_means_the_home_folder(tmp_path):
    """prepare_data, eval_model outputs and judge read and write under $HOME for a `~/...` flag, and leave
    no folder named `~` behind (the generator's flags: test_generate_guards.py)."""
    from openai_stub import OpenAIStub, Step, chat_body

    home, work, run = _home_and_runner(tmp_path)
    (home / "data.json").write_text(json.dumps(RECORDS))
    run(str(REPO_ROOT / "prepare_data.py"), "convert", "--data_path", "~/data.json", "--output_path", "~/conv/a.json")
    assert json.loads((home / "conv" / "a.json").read_text()) == RECORDS
    with OpenAIStub(default=lambda req: Step(body=chat_body("a"))) as stub:
        run(str(REPO_ROOT / "eval_model.py"), "outputs", "--instructions_path", "~/data.json", "--output_path",
            "~/o/m.json", "--base_url", stub.base_url, "--model_name", "m", "--api_style", "chat")
        run(str(REPO_ROOT / "eval_model.py"), "judge", "--model_outputs", "~/o/m.json", "--reference_outputs",
            "~/data.json", "--judge_model", "j", "--output_dir", "~/j/r", "--leaderboard", "~/board.csv",
            "--base_url", stub.base_url, "--api_key", "k")
    assert [r["output"] for r in json.loads((home / "o" / "m.json").read_text())] == ["a", "a"]
    assert (home / "j" / "r" / "summary.json").is_file() and (home / "board.csv").is_file()
    assert os.listdir(work) == []


@pytest.mark.slow
def test_tilde_in_model_paths_means_the_home_folder(tmp_path, tiny_llama_dir):
    """infer and weight_diff (each loads a model: slow on 2 cores) read and write under $HOME for `~/...`."""
    import shutil

    from transformers import AutoTokenizer, LlamaForCausalLM

    from alpaca_lib.core.modeling import missing_special_tokens
    from train import smart_tokenizer_and_embedding_resize

    home, work, run = _home_and_runner(tmp_path)
    (home / "data.json").write_text(json.dumps(RECORDS))
    shutil.copytree(tiny_llama_dir, home / "model")
    tok, tuned = AutoTokenizer.from_pretrained(tiny_llama_dir), LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tok), tok, tuned)  # what train.py saves
    tuned.save_pretrained(home / "tuned")
    tok.save_pretrained(home / "tuned")
    out = run("-m", "alpaca_lib.evaluation.infer", "--model_dir", "~/model", "--data_path", "~/data.json", "--num_examples", "1",
              "--max_new_tokens", "2")
    assert "### Instruction:\nSay hi." in out
    run(str(REPO_ROOT / "weight_diff.py"), "make_diff", "--path_raw", "~/model", "--path_tuned", "~/tuned",
        "--path_diff", "~/diff")
    run(str(REPO_ROOT / "weight_diff.py"), "recover", "--path_raw", "~/model", "--path_diff", "~/diff",
        "--path_tuned", "~/recovered")
    assert (home / "diff" / "config.json").is_file() and (home / "recovered" / "config.json").is_file()
    assert os.listdir(work) == []


# ---- full disks ----


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a tmpfs of 64 KB (`mount -t tmpfs`, so root only), and a function that resizes it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)

    try:
        yield disk, resize
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _fails_with_one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


def _file_size_limit(limit: int):
    """A preexec_fn: the file size limit (RLIMIT_FSIZE) at `limit` bytes, writes past it failing with EFBIG."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process at the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_generator_on_a_full_disk_keeps_a_complete_journal_and_resumes(tmp_path):
    """The journal reaches the file size limit mid-run: one error line, the journal ends on a complete record,
    regen.json holds exactly the journal's items, and the rerun ends with the uninterrupted run's data."""
    from alpaca_lib.generation.journal import read_journal
    from openai_stub import OpenAIStub

    def cmd(out):
        return [sys.executable, "-m", "generate_instruction", "generate_instruction_following_data", "--output_dir",
                str(out), "--num_instructions_to_generate", "60", "--model_name", "stub-model", "--api_style",
                "completions", "--base_url", stub.base_url, "--api_key", "k", "--request_batch_size", "3",
                "--num_cpus", "1", "--seed", "3", "--save_every_s", "0"]

    out, ref = tmp_path / "regen", tmp_path / "ref"
    with OpenAIStub() as stub:
        proc = subprocess.run(cmd(out), capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                              preexec_fn=_file_size_limit(40_000))
        journal = out / "regen.journal.jsonl"
        assert _fails_with_one_line(proc) == (
            f"error: no space left on device while writing {journal} (file size limit reached); {journal} holds "
            "every record written before this one, so a rerun resumes from there. Free some space (or choose a "
            "folder on a disk with more room) and run the same command again.")
        data = journal.read_bytes()
        assert data.endswith(b"\n") and 30_000 < len(data) <= 40_000
        state = read_journal(journal)  # every line is a whole record
        assert 0 < len(state.items) < 60
        assert json.loads((out / "regen.json").read_text()) == state.items
        assert sorted(p.name for p in out.iterdir()) == ["regen.journal.jsonl", "regen.json"]
        for folder in (out, ref):
            proc = subprocess.run(cmd(folder), capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "regen.json").read_bytes() == (ref / "regen.json").read_bytes()


def test_outputs_on_a_full_disk_keep_every_answer_in_the_journal(tmp_path, small_disk):
    """The answers fit in the journal but the output file does not: one error line naming the file, no partial
    file, and once there is room the same command writes it without asking the server again."""
    from openai_stub import OpenAIStub, Step, completion_body

    disk, resize = small_disk
    records = [{"instruction": f"Write paragraph {i}."} for i in range(8)]
    (tmp_path / "eval.json").write_text(json.dumps(records))
    out = disk / "m.json"
    cmd = [sys.executable, str(REPO_ROOT / "eval_model.py"), "outputs", "--instructions_path",
           str(tmp_path / "eval.json"), "--output_path", str(out), "--model_name", "m", "--base_url", "BASE"]
    with OpenAIStub(default=lambda req: Step(body=completion_body(["word " * 800]))) as stub:
        proc = subprocess.run([stub.base_url if a == "BASE" else a for a in cmd], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert len(stub.requests) == 8
    assert _fails_with_one_line(proc) == (
        f"error: no space left on device while writing {out}; every answer is in {disk / 'm.journal.jsonl'}, so the "
        "same command writes the file once there is room. Free some space (or choose a folder on a disk with more "
        "room) and run the same command again.")
    assert sorted(p.name for p in disk.iterdir()) == ["m.journal.jsonl"]
    assert (disk / "m.journal.jsonl").read_text().count('"t": "output"') == 8
    resize("1m")
    with OpenAIStub() as stub:
        proc = subprocess.run([stub.base_url if a == "BASE" else a for a in cmd], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert stub.requests == []
    assert [r["output"] for r in json.loads(out.read_text())] == [("word " * 800).strip()] * 8


def test_weight_diff_on_a_full_disk_leaves_nothing_behind(tmp_path, small_disk, tiny_llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from alpaca_lib.core.modeling import missing_special_tokens
    from train import smart_tokenizer_and_embedding_resize

    disk, _ = small_disk
    tok, tuned = AutoTokenizer.from_pretrained(tiny_llama_dir), LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tok), tok, tuned)
    tuned.save_pretrained(tmp_path / "tuned")
    tok.save_pretrained(tmp_path / "tuned")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "weight_diff.py"), "make_diff", "--path_raw",
                           str(tiny_llama_dir), "--path_tuned", str(tmp_path / "tuned"), "--path_diff",
                           str(disk / "diff")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert _fails_with_one_line(proc) == (
        f"error: no space left on device while writing {disk / 'diff'}; the partial output was removed, so nothing "
        "was left behind. Free some space (or choose a folder on a disk with more room) and run the same command "
        "again.")
    assert list(disk.iterdir()) == []


def test_judge_files_on_a_full_disk_are_written_by_the_rerun(tmp_path, small_disk):
    from openai_stub import OpenAIStub, Step, chat_body

    disk, resize = small_disk
    (tmp_path / "m.json").write_text(json.dumps([{"instruction": f"Say {w}.", "output": f"{w}! " * 2500} for w in "abc"]))
    (tmp_path / "r.json").write_text(json.dumps([{"instruction": f"Say {w}.", "output": f"{w}." * 2} for w in "abc"]))
    out = disk / "judged"
    cmd = [sys.executable, str(REPO_ROOT / "eval_model.py"), "judge", "--model_outputs", "m.json",
           "--reference_outputs", "r.json", "--judge_model", "j", "--output_dir", str(out), "--base_url", "BASE",
           "--api_key", "k"]
    with OpenAIStub(default=lambda req: Step(body=chat_body("a"))) as stub:
        proc = subprocess.run([stub.base_url if a == "BASE" else a for a in cmd], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert len(stub.requests) == 6
    assert _fails_with_one_line(proc) == (
        f"error: no space left on device while writing {out}; the verdicts are in {out / 'judge.journal.jsonl'}, so "
        "the same command writes these files once there is room. Free some space (or choose a folder on a disk "
        "with more room) and run the same command again.")
    assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]  # no partial file left
    resize("2m")
    with OpenAIStub() as stub:
        proc = subprocess.run([stub.base_url if a == "BASE" else a for a in cmd], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert stub.requests == []
    assert {"summary.json", "annotations.json", "report.md", "judge.png"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "summary.json").read_text())["n_pairs"] == 3


def test_judge_verdicts_received_before_a_request_fails_are_kept(tmp_path):
    """The two requests of one pair fail for good while the other pair's are in flight: those verdicts are
    journaled, and the rerun asks only for the failed pair's."""
    from openai_stub import OpenAIStub, Step, chat_body, error

    (tmp_path / "m.json").write_text(json.dumps([{"instruction": f"Say {w}.", "output": f"{w}!"} for w in ("hi", "bye")]))
    (tmp_path / "r.json").write_text(json.dumps([{"instruction": f"Say {w}.", "output": f"{w}."} for w in ("hi", "bye")]))

    def fail_bye(req):
        if "Say bye." in req.body["messages"][-1]["content"]:
            return error(400, "not this one")
        return Step(body=chat_body("a"), delay_s=0.5)

    cmd = [sys.executable, str(REPO_ROOT / "eval_model.py"), "judge", "--model_outputs", "m.json",
           "--reference_outputs", "r.json", "--judge_model", "j", "--output_dir", "judged", "--base_url", "BASE",
           "--api_key", "k", "--max_concurrency", "4"]
    with OpenAIStub(default=fail_bye) as stub:
        proc = subprocess.run([stub.base_url if a == "BASE" else a for a in cmd], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
    assert _fails_with_one_line(proc).endswith("rejected the request (400): Error code: 400 - not this one")
    journal = [json.loads(line) for line in (tmp_path / "judged" / "judge.journal.jsonl").read_text().splitlines()]
    assert sorted((r["pair"], r["order"]) for r in journal if r["t"] == "verdict") == [(0, 0), (0, 1)]
    with OpenAIStub(default=lambda req: Step(body=chat_body("b"))) as stub:
        proc = subprocess.run([stub.base_url if a == "BASE" else a for a in cmd], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sorted(r.body["messages"][-1]["content"].count("Say bye.") for r in stub.requests) == [1, 1]
