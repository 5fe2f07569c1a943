"""One writer per output folder: a lock that a second run is refused by, with a message naming the holder.

    from alpaca_lib.core.locking import output_lock
    with output_lock("runs/regen", "generate_instruction generate_instruction_following_data"):
        ...                                  # read the journal, append to it, write the outputs

Every command that journals into a folder takes this lock before it reads or writes anything there,
so two runs can never interleave their records or repair each other's journal. The lock is an
`fcntl.flock` on `FOLDER/.alpaca.lock`: the kernel releases it when the holder's process ends, however
it ends (`kill -9`, a crash, a lost terminal), so a killed run never leaves a folder locked and
resuming needs no clean-up. While held, the file names the holder (pid, host, command, start time),
and a refused run prints those. On a normal exit the file is removed.

Needs `fcntl` (Linux, macOS). On network file systems flock is only as good as the server's locking.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from alpaca_lib.core.errors import UsageError

LOCK_NAME = ".alpaca.lock"


class OutputLockedError(UsageError):
    """Another run holds the output folder's lock."""


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str, name: str = LOCK_NAME, wait: bool = False) -> Iterator[Path]:
    """Holds the exclusive lock of `folder` (created if absent) for the duration of the block.

    Args:
        folder: the output folder the command writes into.
        command: what holds it, for the message another run prints (e.g. "eval_model outputs").
        name: the lock file's name in `folder`; a command that writes one file of a shared folder locks
            that file only (e.g. `.model_outputs.json.lock`).
        wait: wait for the holder to let go instead of refusing (for a short shared update, such as a
            leaderboard row).
    Yields:
        The lock file's path.
    Raises:
        OutputLockedError: another process (or another lock in this one) holds it; the message names
            the holder's pid, host, command and start time, and says what to do.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            what = folder if name == LOCK_NAME else folder / name[1:].removesuffix(".lock")
            raise OutputLockedError(_refusal(what, holder, path)) from None
        except OSError as e:
            os.close(fd)
            raise UsageError(
                f"cannot lock {path} ({e.strerror}): the file system of {folder} does not support flock; "
                "choose an output folder on a local disk"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us may have removed the file between our open and our flock: then we
        # locked a file no one else can see, and must lock the one at `path` instead.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}  # no argv: it may hold a key
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder, ensure_ascii=False) + "\n").encode("utf-8"), 0)
        yield path
    finally:
        # Removed while still locked, so no one can take a lock on it after we let go.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def job_lock(folder: str | os.PathLike, command: str) -> Iterator[Optional[Path]]:
    """`output_lock(folder, command)` taken once for a whole job, however many processes it has.

    Under torchrun (torch.distributed initialised, more than one process) the process of global rank 0 takes
    the lock and tells the others the outcome: if it is refused, every process raises the same
    `OutputLockedError`; otherwise they go on, and the lock is held until rank 0 leaves the block. Taking it
    on every rank would have the job refuse itself. A folder this creates is removed again if it is still
    empty when the block fails, so a run refused later on leaves nothing behind.

    Yields:
        The lock file's path on the process that holds it, None on the others.
    """
    import torch.distributed as dist  # torch only for the job-wide lock (train.py), not for the commands' locks

    folder = Path(folder)
    existed = folder.exists()
    shared = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    try:
        if not shared:
            with output_lock(folder, command) as path:
                yield path
            return
        refusal = [None]
        with contextlib.ExitStack() as stack:
            if dist.get_rank() == 0:
                try:
                    path = stack.enter_context(output_lock(folder, command))
                except UsageError as e:  # held by another run, or a file system without flock
                    refusal[0] = (isinstance(e, OutputLockedError), str(e))
            dist.broadcast_object_list(refusal, src=0)
            if refusal[0] is not None:
                locked, message = refusal[0]
                raise (OutputLockedError if locked else UsageError)(message)
            yield path if dist.get_rank() == 0 else None
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        raise


def _read_holder(fd: int) -> dict:
    # The holder writes its details right after locking; give it a moment if we came in between.
    for _ in range(20):
        data = os.pread(fd, 65536, 0)
        try:
            holder = json.loads(data)
            if isinstance(holder, dict):
                return holder
        except ValueError:
            pass
        time.sleep(0.01)
    return {}


def _refusal(what: Path, holder: dict, path: Path) -> str:
    who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('command', '?')}, "
           f"started {holder.get('started', '?')})") if holder else "another process (it has not written its details yet)"
    return (
        f"{what} is in use by {who}; only one run may write to it at a time. Wait for that "
        f"run to finish (or stop it), then run this command again to resume, or choose another output. "
        f"The lock ({path}) goes away by itself when that process ends."
    )
