"""A warm Python for the tests: train.py's imports done once, then one forked process per command.

    warm = WarmPython.start(socket_path, log)        # conftest's `warm` fixture: one per test process
    log = warm.run_script([sys.executable, TRAIN, *args], cwd)                     # as conftest.run_script
    proc = warm.run([sys.executable, HOOKS, TRAIN, *args], cwd, env=env)          # as subprocess.run
    proc = warm.popen([sys.executable, TRAIN, *args], cwd)      # as Popen(stdout=PIPE, stderr=STDOUT, text)

`python train.py` spends about 4 s importing torch, transformers, peft and datasets before its first line
runs, and 1 s more tearing them down at exit; the resume and guard tests start it some 60 times. Here a
server process (this file, run as a script) does those imports once, as `python train.py` would, and for
each command forks a child that goes on as a new interpreter would from there: it starts a session of its
own (`start_new_session`), takes the caller's stdout and stderr (stdin is /dev/null), working folder,
environment and argv, puts the script's folder first on sys.path and runs the script as `__main__`. Its
exit status comes back to the caller as subprocess reports it (a signal as its negative number).
Everything the script does after its imports is its own: argument parsing, the run, its signal handlers,
atexit, exit. The caller signals the child by its pid while it runs, as a process it started. A run that
the caller stops waiting for in `run` (a timeout, an interrupt) is killed with its session, and so is any
run still going when the test session ends.

What it does not reproduce: what happens while those libraries are imported (an environment variable
they read at import time has the server's value, the test process's own environment; the hash seed is the
server's), and the teardown of the imported modules at exit: a child exits as the interpreter's exit
begins (threads joined, atexit handlers run, stdout and stderr flushed), so a file a script forgot to
close loses what it had not yet written, where a new interpreter's teardown would usually write it. A
script next to another copy of alpaca_lib is refused: this checkout's is imported already.

`NewPython` (conftest's `fresh` fixture) has the same interface over `subprocess`: the tests of import-time
behaviour, torchrun's runs and the runs that check the launch itself are given it instead (each test
module says which).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_MAX_MESSAGE = 1 << 20


# ---- the client, used by the tests ----


class _Launcher:
    """What WarmPython and NewPython share: `run_script` on top of their `run`."""

    def run_script(self, cmd: list[str], cwd: Path, expect: int = 0, timeout: float = 900) -> str:
        """As conftest.run_script: runs `cmd` unbuffered, asserts its exit status, returns stdout + stderr."""
        proc = self.run(cmd, cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=timeout)
        log = proc.stdout + proc.stderr
        assert proc.returncode == expect, log[-6000:]
        return log


class NewPython(_Launcher):
    """WarmPython's interface over `subprocess`: each command in a new interpreter and a session of its own
    (conftest's `fresh` fixture), so a test picks how a run starts by the launcher it is given."""

    def popen(self, cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=cwd, env=env, start_new_session=True)

    def run(self, cmd: list[str], cwd: Path, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=timeout, start_new_session=True)


class WarmProcess:
    """A command the server started: `pid`, `returncode`, `wait()`, `poll()`, `kill()`, and `stdout` when piped."""

    def __init__(self, args: list[str], conn: socket.socket, stdout=None):
        self.args, self._conn, self.stdout, self.returncode = args, conn, stdout, None
        conn.settimeout(60)
        self.pid = self._receive()["pid"]

    def _receive(self) -> dict:
        message = self._conn.recv(_MAX_MESSAGE)
        if not message:
            raise RuntimeError(f"the warm Python server went away while it ran {self.args}")
        return json.loads(message)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                self.returncode = self._receive()["status"]
            except TimeoutError:  # still running, as Popen.wait leaves it
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
            self.wait()
        return self.returncode

    def kill(self) -> None:
        """SIGKILLs the command and what it started in its session (its own process group), unless it ended."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)


class WarmPython(_Launcher):
    """The client of a server started with `python tests/warm_python.py SOCKET` (see the module docstring)."""

    def __init__(self, socket_path: Path, server: subprocess.Popen):
        self.socket_path, self.server = socket_path, server
        self._started: list[WarmProcess] = []

    @classmethod
    def start(cls, socket_path: Path, log: Path, timeout: float = 300) -> "WarmPython":
        """Starts the server (its own output to `log`) and waits until it has done its imports."""
        # PYTHONUNBUFFERED: the server's stdout and stderr without a buffer of their own, so that a child's
        # stream (reconfigured below) is as buffered as the child's environment says, and no more.
        with open(log, "wb") as out:
            server = subprocess.Popen([sys.executable, __file__, str(socket_path)], stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while not socket_path.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"the warm Python server did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.05)
        return cls(socket_path, server)

    def stop(self) -> None:
        """Kills what is still running (a test that stopped midway leaves no run behind), then the server."""
        for proc in self._started:
            proc.kill()
        self.server.kill()
        self.server.wait()

    def _start(self, cmd: list[str], cwd: Path, env: dict | None, fds: tuple[int, int]) -> socket.socket:
        """Sends `cmd` to the server with `fds` as its stdout and stderr (its stdin is the server's, /dev/null)."""
        if len(cmd) < 2 or cmd[0] != sys.executable or cmd[1].startswith("-"):
            raise ValueError(f"warm Python runs `[sys.executable, script, *args]`, not {cmd}")
        # The script, and a script that a test launcher runs in turn, import the alpaca_lib beside them.
        for script in [Path(a).resolve() for a in cmd[1:] if str(a).endswith(".py") and Path(a).is_file()]:
            beside = script.parent / "alpaca_lib"
            if beside.exists() and beside.resolve() != REPO_ROOT / "alpaca_lib":
                raise ValueError(f"{script} would import {beside}, but warm Python has this checkout's alpaca_lib "
                                 "imported already; run it in a new interpreter")
        if not Path(cwd).is_dir():  # as subprocess reports it, in the caller
            raise FileNotFoundError(errno.ENOENT, "no such working folder", str(cwd))
        request = {"argv": [str(Path(cmd[1]).resolve()), *map(str, cmd[2:])], "cwd": str(cwd),
                   "env": dict(os.environ if env is None else env)}
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.connect(str(self.socket_path))
            socket.send_fds(conn, [json.dumps(request).encode()], list(fds))
        except BaseException:
            conn.close()
            raise
        return conn

    def _track(self, proc: WarmProcess) -> WarmProcess:
        self._started = [p for p in self._started if p.returncode is None] + [proc]
        return proc

    def popen(self, cmd: list[str], cwd: Path, env: dict | None = None) -> WarmProcess:
        """Starts `cmd`, its stdout and stderr together in the returned process's `stdout` (text lines,
        newlines translated, as `Popen(stdout=PIPE, stderr=STDOUT, text=True)` gives them)."""
        read, write = os.pipe()
        stdout = open(read, encoding="utf-8")
        try:
            conn = self._start(cmd, cwd, env, (write, write))
        except BaseException:
            stdout.close()
            raise
        finally:
            os.close(write)
        return self._track(WarmProcess(cmd, conn, stdout=stdout))

    def run(self, cmd: list[str], cwd: Path, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        """Runs `cmd` to its end: `subprocess.run(cmd, capture_output=True, text=True, start_new_session=True)`,
        which also kills the command when the wait ends in an exception (a timeout, an interrupted test)."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = self._track(WarmProcess(cmd, self._start(cmd, cwd, env, (out.fileno(), err.fileno()))))
            try:
                code = proc.wait(timeout)
            except BaseException:
                proc.kill()
                raise
            return subprocess.CompletedProcess(cmd, code, _text(out), _text(err))


def _text(file) -> str:
    """What a file holds as `text=True` reads it: UTF-8, with \\r\\n and \\r read as \\n."""
    file.seek(0)
    return file.read().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


# ---- the server ----


def _serve(socket_path: str) -> None:
    """Imports what `python train.py` imports, then forks one child per request until its parent is gone;
    then kills the children still running."""
    sys.path[0] = str(REPO_ROOT)  # as `python train.py` has it
    import train  # noqa: F401  (the imports, done once)

    del sys.modules["train"]  # a child's own `import train` imports it afresh, as in a new interpreter
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(socket_path + ".tmp")
    listener.listen(64)
    os.rename(socket_path + ".tmp", socket_path)  # the client waits for this name: ready
    parent, running = os.getppid(), {}
    while os.getppid() == parent:
        if select.select([listener], [], [], 0.02)[0]:
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 2)
            pid = os.fork()
            if pid == 0:
                try:
                    listener.close()
                    for other in running.values():
                        other.close()
                    _become(json.loads(message), fds, conn)  # ends the process
                except BaseException:  # a failure before the script ran, or while exiting: never back in here
                    traceback.print_exc()
                finally:
                    os._exit(1)
            for fd in fds:
                os.close(fd)
            _send(conn, {"pid": pid})
            running[pid] = conn
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = running.pop(pid)
            _send(conn, {"status": os.waitstatus_to_exitcode(status)})
            conn.close()
    for pid in running:  # the test process is gone: so are its runs
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.send(json.dumps(message).encode())
    except OSError:  # the caller is gone (its test failed or was interrupted)
        pass


def _become(request: dict, fds: list[int], conn: socket.socket) -> None:
    """In the forked child: turns into `python SCRIPT ARGS...` run as `request` says, and exits as it would."""
    import runpy

    conn.close()
    os.setsid()
    for target, fd in zip((1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # As a new interpreter buffers them: stdout by blocks, stderr by lines; PYTHONUNBUFFERED writes both at once.
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdout.reconfigure(line_buffering=False, write_through=unbuffered)
    sys.stderr.reconfigure(line_buffering=True, write_through=unbuffered)
    # A new interpreter's global RNGs start from fresh entropy (Python's `random` is reseeded at fork already).
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(script)
    signum = None
    try:
        runpy.run_path(script, run_name="__main__")
        status = 0
    except SystemExit as e:
        status = _exit_status(e.code)
    except BaseException as e:  # reported as the interpreter would, from the script's frame on
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next
        # (None when the script never ran: a SyntaxError is then printed without a traceback, as there)
        sys.excepthook(type(e), e, e.with_traceback(tb).__traceback__)
        status, signum = 1, signal.SIGINT if isinstance(e, KeyboardInterrupt) else None
    _exit(status, signum)


def _exit_status(code) -> int:
    """The status `sys.exit(code)` ends a process with (a message is printed to stderr, status 1)."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def _exit(status: int, signum: int | None = None) -> None:
    """Ends the child as the interpreter's own exit begins: waits for its threads, runs the atexit handlers and
    flushes stdout and stderr. It then skips tearing down the imported modules (see the module docstring).
    `signum`: ended by that signal (Ctrl-C), which a new interpreter re-raises with its default action."""
    import atexit
    import threading

    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    if signum is not None:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    os._exit(status & 0xFF)


if __name__ == "__main__":
    _serve(sys.argv[1])
