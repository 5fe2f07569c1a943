"""Shared fixtures and helpers. Run the suite with `bash scripts/test.sh` (CPU, no network).

The project is installed editable into .venv (`pip install -e .`), so tests import `train`, `utils`
and `alpaca_lib` as installed modules; nothing here edits sys.path, and the run stops at once if they
would come from another checkout than this one.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist the workers share the cores: each worker, and every process it starts, gets its share of
# threads (read by torch when it is first imported, after this), instead of every process starting one thread
# per core and all of them spinning against each other.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, _threads)

REPO_ROOT = Path(__file__).resolve().parent.parent
ALPACA_DATA = REPO_ROOT / "alpaca_data.json"  # 254 records, shipped with the repo


def pytest_sessionstart(session) -> None:
    """Stops the run unless `alpaca_lib` and the scripts are imported from this checkout: an environment
    installed from another one would test that code instead."""
    for name, own in [("alpaca_lib", REPO_ROOT / "alpaca_lib" / "__init__.py"),
                      *[(m, REPO_ROOT / f"{m}.py") for m in ("train", "utils", "eval_model")]]:
        spec = importlib.util.find_spec(name)
        found = Path(spec.origin).resolve() if spec and spec.origin else None
        if found != own:
            raise pytest.UsageError(
                f"tests in {REPO_ROOT} would import {name} from {found}, not from this checkout. Install this checkout "
                f"into the environment (bash scripts/setup_env.sh, or pip install -e {REPO_ROOT}) and run again."
            )


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random LLaMA (2 layers, hidden 64, torch seed 0) and a LLaMA-style tokenizer (1000 tokens, no pad)."""
    from alpaca_testkit.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", vocab_size=1000)


@pytest.fixture(scope="session")
def warm(tmp_path_factory):
    """A warm Python (tests/warm_python.py): runs this checkout's scripts in a forked process whose imports are
    done, about 5 s faster per train.py run than a new interpreter. One server per test process."""
    import tempfile

    from warm_python import WarmPython

    log = tmp_path_factory.mktemp("warm") / "server.log"
    # In /tmp: a Unix socket's path has room for 107 bytes, which pytest's temporary folders can exceed.
    with tempfile.TemporaryDirectory(prefix="warm-", dir="/tmp") as folder:
        server = WarmPython.start(Path(folder) / "socket", log=log)
        yield server
        server.stop()


@pytest.fixture(scope="session")
def fresh():
    """The warm Python's interface over subprocess: each run in a new interpreter (tests/warm_python.py)."""
    from warm_python import NewPython

    return NewPython()


@pytest.fixture()
def tokenizer(tiny_llama_dir):
    """The tiny LLaMA's tokenizer as train.py sets it up: right padding, `[PAD]` added, 256 tokens at most.

    A test module that needs another length overrides it: `def tokenizer(tokenizer)` and set
    `tokenizer.model_max_length`.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir, model_max_length=256, padding_side="right")
    tok.add_special_tokens({"pad_token": "[PAD]"})
    return tok


def need_package(module: str, install: str) -> None:
    """Skips the test when `module` is missing, unless the run was meant to have it: `scripts/test.sh` sets
    ALPACA_TEST_ENV=full after `scripts/setup_env.sh` installed everything, and then a missing package is a
    broken install, so the test fails instead of passing by skipping.
    """
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        return
    message = f"{module} is not installed ({install})"
    if os.environ.get("ALPACA_TEST_ENV") == "full":
        pytest.fail(message + "; scripts/setup_env.sh should have installed it", pytrace=False)
    pytest.skip(message)


def alpaca_records() -> list[dict]:
    """The records of the bundled alpaca_data.json, freshly read (callers may change them)."""
    return json.loads(ALPACA_DATA.read_text(encoding="utf-8"))


def write_alpaca_subset(path: Path, which: slice) -> Path:
    """Writes `alpaca_records()[which]` to `path` as a JSON list (a small --data_path) and returns `path`."""
    path.write_text(json.dumps(alpaca_records()[which]), encoding="utf-8")
    return path


def original_preprocess(records, tokenizer):
    """The original Alpaca preprocess(), one call per string, kept here as the reference (test_train.py,
    test_eval_split.py): returns (input_ids, labels), lists of 1-D LongTensors."""
    from alpaca_lib.core.modeling import IGNORE_INDEX
    from alpaca_lib.core.prompt import PROMPT_DICT

    sources = [
        PROMPT_DICT["prompt_input"].format_map(ex) if ex.get("input", "") != ""
        else PROMPT_DICT["prompt_no_input"].format_map(ex)
        for ex in records
    ]
    targets = [f"{ex['output']}{tokenizer.eos_token}" for ex in records]

    def tokenize(strings):
        out = [tokenizer(s, return_tensors="pt", padding="longest", max_length=tokenizer.model_max_length,
                         truncation=True) for s in strings]
        return [t.input_ids[0] for t in out], [t.input_ids.ne(tokenizer.pad_token_id).sum().item() for t in out]

    input_ids, _ = tokenize([s + t for s, t in zip(sources, targets)])
    _, source_lens = tokenize(sources)
    labels = copy.deepcopy(input_ids)
    for label, source_len in zip(labels, source_lens):
        label[:source_len] = IGNORE_INDEX
    return input_ids, labels


def seed_task(i: int, instruction: str, task_input: str = "", output: str = "out") -> dict:
    """One record of a self-instruct seed file (seed_tasks.jsonl's format), with a single instance."""
    return {"id": f"seed_task_{i}", "name": f"t{i}", "instruction": instruction,
            "instances": [{"input": task_input, "output": output}], "is_classification": False}


def write_seed_tasks(path: Path, tasks: list[dict]) -> Path:
    """Writes `tasks` as JSON lines (a --seed_tasks_path) and returns `path`."""
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks), encoding="utf-8")
    return path


def with_flags(args: list, **flags) -> list:
    """`args` with the value of each --flag replaced (or the flag added)."""
    args = list(args)
    for name, value in flags.items():
        if f"--{name}" in args:
            args[args.index(f"--{name}") + 1] = str(value)
        else:
            args += [f"--{name}", str(value)]
    return args


def run_script(cmd: list[str], cwd: Path, expect: int = 0, timeout: float = 900) -> str:
    """Runs `cmd` (Python output unbuffered), asserts that it exits with `expect`, returns stdout + stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log = proc.stdout + proc.stderr
    assert proc.returncode == expect, log[-6000:]
    return log


def logged_steps(log: str) -> int:
    """How many optimizer steps a train.py run trained: the loss lines (`{'loss': ...}`, one per step with
    --logging_steps 1, printed by the main process only) in its output."""
    return len(re.findall(r"^\{'loss': ", log, flags=re.M))


def run_train_expecting_error(tmp_path: Path, args: list[str], output_dir: Path | None = None) -> str:
    """Runs train.py's command line, `train.main(["--model_name_or_path", M, "--output_dir", tmp/out, *ARGS])`,
    in this process from `tmp_path`, and returns what it wrote to stderr; asserts it failed before loading a model.

    The model is a folder whose config.json cannot be loaded: it passes the path checks, but any attempt
    to load it would end in a traceback (an exception out of this call) instead of the expected `error: ...`
    line. Asserts that the run exited with status 1 and wrote no output folder. In-process, because these
    checks end before any model loads: a new interpreter would spend seconds importing transformers for
    each case (the launch itself, `python train.py` ending in one `error:` line and status 1, is run as a user
    runs it in test_train_guards.py's refused-resume test).
    """
    import contextlib
    import io

    import train

    model = tmp_path / "unloadable-model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("not a config: loading this model is a bug in the test")
    output_dir = output_dir or tmp_path / "out"
    existed = output_dir.exists()
    stderr, cwd, environ, meta_path = io.StringIO(), os.getcwd(), dict(os.environ), list(sys.meta_path)
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()), \
                pytest.raises(SystemExit) as exited:
            train.main(["--model_name_or_path", str(model), "--output_dir", str(output_dir), *args])
    finally:
        # What train.main sets up for its process (quiet_entry_point's variables and import hook) stays here:
        # the test process's later runs must see the environment their tests gave them.
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        sys.meta_path[:] = meta_path
    assert exited.value.code == 1, stderr.getvalue()[-4000:]
    assert existed or not output_dir.exists()
    return stderr.getvalue()


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), read from /proc (Linux)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


def kill_when_journaled(cmd: list[str], cwd: Path, journal: Path, marker: str, count: int) -> None:
    """Starts `cmd` and SIGKILLs it once `journal` holds `count` lines containing `marker` (a kill mid-run).

    Asserts that the process was still running then, so the kill really interrupted it.
    """
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        while proc.poll() is None and not (journal.exists() and journal.read_text().count(marker) >= count):
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
