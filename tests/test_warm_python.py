"""The warm Python (tests/warm_python.py) runs a script as a new interpreter would.

    bash scripts/test.sh tests/test_warm_python.py

Each case runs a probe script with `subprocess` and through the warm server and compares what the script
saw and how it ended: argv, working folder, sys.path[0], environment, its own session, stdout and stderr
apart and read as text, exit statuses (sys.exit with a number, a negative one or a message, an exception
and its traceback, a script that does not compile, a signal), atexit handlers and threads at exit, and
unbuffered output arriving while the script still runs. A run that times out is killed; a missing working
folder is an error in the caller, as subprocess reports it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import atexit, json, os, sys, threading, time

def facts():
    return {"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "env": os.environ.get("PROBE_VALUE"),
            "own_session": os.getsid(0) == os.getpid(), "main": __name__, "stdin": sys.stdin.read()}

how = sys.argv[1]
print(json.dumps(facts()))
print("to stderr", file=sys.stderr)
if how == "ok":
    sys.stdout.write("carriage\\r\\nreturns\\r")
if how == "code":
    sys.exit(3)
if how == "negative":
    sys.exit(-1)
if how == "message":
    sys.exit("stopped: a message")
if how == "raise":
    def inner():
        raise ValueError("boom")
    inner()
if how == "atexit":
    atexit.register(lambda: print("atexit ran", flush=True))
    def late():
        time.sleep(0.3)
        print("thread finished", flush=True)
    threading.Thread(target=late).start()
if how == "wait":
    if os.environ.get("PROBE_PIDFILE"):
        open(os.environ["PROBE_PIDFILE"], "w").write(str(os.getpid()))
    print("waiting", flush=True)
    time.sleep(60)
"""


def _line_of(text: str) -> int:
    return PROBE.splitlines().index(text) + 1


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "probe.py"
    path.write_text(PROBE)
    return path


def _both(warm, probe: Path, how: str, cwd: Path):
    env = {**os.environ, "PROBE_VALUE": "from the caller"}
    cmd = [sys.executable, str(probe), how, "second arg"]
    fresh = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                           start_new_session=True, timeout=60)
    return fresh, warm.run(cmd, cwd, env=env, timeout=60)


@pytest.mark.parametrize("how, status", [("ok", 0), ("code", 3), ("negative", 255), ("message", 1), ("raise", 1),
                                         ("atexit", 0)])
def test_a_script_sees_and_ends_as_in_a_new_interpreter(warm, probe, tmp_path, how, status):
    fresh, warmed = _both(warm, probe, how, tmp_path)
    assert (warmed.returncode, warmed.stdout, warmed.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert fresh.returncode == status
    seen = json.loads(warmed.stdout.splitlines()[0])
    assert seen == {"argv": [str(probe), how, "second arg"], "cwd": str(tmp_path), "path0": str(probe.parent),
                    "env": "from the caller", "own_session": True, "main": "__main__", "stdin": ""}
    assert warmed.stderr.startswith("to stderr\n")
    if how == "raise":  # the traceback starts at the script, as a new interpreter prints it
        assert warmed.stderr.splitlines()[1:3] == ["Traceback (most recent call last):",
                                                   f'  File "{probe}", line {_line_of("    inner()")}, in <module>']
        assert warmed.stderr.endswith("ValueError: boom\n")
    if how == "message":
        assert warmed.stderr == "to stderr\nstopped: a message\n"
    if how == "atexit":  # the thread is waited for, then the handler runs
        assert warmed.stdout.splitlines()[1:] == ["thread finished", "atexit ran"]
    if how == "ok":  # read as text=True reads it
        assert warmed.stdout.endswith("}\ncarriage\nreturns\n")


def test_a_signalled_script_reports_the_signal_and_its_output_arrives_as_printed(warm, probe, tmp_path):
    proc = warm.popen([sys.executable, str(probe), "wait"], tmp_path,
                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert json.loads(proc.stdout.readline())["argv"][1] == "wait"
    assert [proc.stdout.readline(), proc.stdout.readline()] == ["to stderr\n", "waiting\n"]
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert proc.stdout.read() == ""


def test_a_script_beside_another_alpaca_lib_is_refused(warm, tmp_path):
    (tmp_path / "alpaca_lib").mkdir()
    (tmp_path / "train.py").write_text("")
    with pytest.raises(ValueError, match="would import .*alpaca_lib, but warm Python has this checkout's"):
        warm.run([sys.executable, str(tmp_path / "train.py")], tmp_path)


def test_a_run_that_times_out_is_killed_and_a_missing_folder_is_reported_as_subprocess_does(warm, probe, tmp_path):
    import time

    pidfile = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run([sys.executable, str(probe), "wait"], tmp_path, env={**os.environ, "PROBE_PIDFILE": str(pidfile)},
                 timeout=2)
    pid, deadline = int(pidfile.read_text()), time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:  # killed, then reaped by the server
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
    for run in (subprocess.run, warm.run):
        with pytest.raises(FileNotFoundError):
            run([sys.executable, str(probe), "ok"], cwd=tmp_path / "nope")


def test_a_script_that_does_not_compile_is_reported_as_a_new_interpreter_reports_it(warm, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("print('never'\n")
    cmd = [sys.executable, str(broken)]
    fresh = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    warmed = warm.run(cmd, tmp_path, timeout=60)
    assert (warmed.returncode, warmed.stdout, warmed.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert fresh.returncode == 1 and fresh.stderr.startswith(f'  File "{broken}", line 1')
