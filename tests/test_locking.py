"""One writer per output folder: alpaca_lib.core.locking.output_lock.

    .venv/bin/python -m pytest tests/test_locking.py -q

The refusal names the holder (pid, host, command, start time); a holder killed with SIGKILL leaves no
lock behind; a lock file removed by a leaving holder between another process's open and flock is not
shared. The generator's own use is tested through its command line in test_generate_pipeline.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from alpaca_lib.core import locking
from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.locking import LOCK_NAME, OutputLockedError, output_lock
from conftest import REPO_ROOT


def test_a_second_lock_is_refused_naming_the_holder_and_the_folder_is_free_after(tmp_path):
    out = tmp_path / "run"
    with output_lock(out, "generate_instruction generate_instruction_following_data") as path:
        assert path == out / LOCK_NAME
        holder = json.loads(path.read_text())
        assert sorted(holder) == ["command", "host", "pid", "started"] and holder["pid"] == os.getpid()
        with pytest.raises(OutputLockedError) as refused:
            with output_lock(out, "eval_model outputs"):
                pass
        assert isinstance(refused.value, UsageError)
        assert str(refused.value) == (
            f"{out} is in use by pid {os.getpid()} on {socket.gethostname()} (generate_instruction "
            f"generate_instruction_following_data, started {holder['started']}); only one run may write to it at a "
            f"time. Wait for that run to finish (or stop it), then run this command again to resume, or "
            f"choose another output. The lock ({path}) goes away by itself when that process ends."
        )
        assert json.loads(path.read_text()) == holder  # the refused one wrote nothing
    assert not (out / LOCK_NAME).exists()
    with output_lock(out, "again"):
        assert json.loads((out / LOCK_NAME).read_text())["command"] == "again"


def test_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from alpaca_lib.core.locking import output_lock\n"
         f"with output_lock({str(tmp_path)!r}, 'holder'):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(OutputLockedError, match=rf"in use by pid {holder.pid} on .* \(holder, started "):
            with output_lock(tmp_path, "me"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the file stays, with the dead holder's details, but no lock
    with output_lock(tmp_path, "me"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_holder_that_has_not_written_its_details_is_still_refused(tmp_path):
    import fcntl

    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(OutputLockedError, match=r"in use by another process \(it has not written its details yet\)"):
            with output_lock(tmp_path, "me"):
                pass
    finally:
        os.close(fd)


def test_a_lock_file_removed_between_open_and_flock_is_not_shared(tmp_path, monkeypatch):
    # The holder leaves (removing the file) right after we opened it: we lock a file no one else sees,
    # so we must notice and lock the one at the path instead.
    real_open, opened = os.open, []

    def open_then_holder_leaves(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if not opened:
            os.unlink(path)
        opened.append(os.fstat(fd).st_ino)
        return fd

    monkeypatch.setattr(locking.os, "open", open_then_holder_leaves)
    with output_lock(tmp_path, "me") as path:
        assert len(opened) == 2 and os.stat(path).st_ino == opened[1]
        assert json.loads(path.read_text())["command"] == "me"


def test_a_file_system_without_flock_is_a_usage_error(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(UsageError, match=rf"cannot lock {tmp_path / LOCK_NAME} \(No locks available\): the file system"):
        with output_lock(tmp_path, "me"):
            pass
