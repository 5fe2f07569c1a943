"""Writes that a crash cannot leave half done: atomic files, staged folders, moves into place
(and the project's JSON and hashing helpers, which write through them).

    with atomic_write("out/regen.json") as f:
        f.write(text)                      # out/regen.json is the old file or the new one, never a mix
    with staging_dir("out/model") as tmp:
        save_files(tmp)                    # out/model appears only once everything is in it

Every output of the project goes through these: the preprocessing cache, generated data, weight diffs,
the final model (`publish`, file by file, since its folder also holds checkpoints) and checkpoint
manifests. Data is synced to disk before the rename that makes it visible, so a power cut cannot leave
a name pointing at missing bytes either.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import json
import os
import re
import resource
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from alpaca_lib.core.errors import UsageError


class OutputExistsError(UsageError, FileExistsError):
    """An output folder that is already there, and replacing it was not asked for."""


# A full disk, a full quota, and the file size limit (`ulimit -f`, RLIMIT_FSIZE) all stop a write the same way.
_DISK_FULL_ERRNOS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded",
                     errno.EFBIG: "file size limit reached"}
# What writers that do not report errno say: safetensors (Rust) names the OS error; torch.save's C++ stream
# says only that the stream failed, so for it the file system is looked at (`_looks_full`).
_DISK_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|File too large|os error (28|122|27)\b")
_OPAQUE_WRITE_ERROR = re.compile(r"iostream error|unexpected pos \d+ vs \d+|PytorchStreamWriter failed writing")


class DiskFullError(UsageError, OSError):
    """A write failed because the disk, the quota or the file size limit is full; the message says what was kept.

    Still an OSError, so callers that catch the original error catch this one too."""


def disk_full_reason(error: BaseException, path: str | os.PathLike | None = None) -> Optional[str]:
    """Why `error` (or an exception it came from) is a full disk, or None when it is something else.

    Args:
        error: what a writer raised.
        path: the file or folder being written; for writers whose errors carry no errno (torch.save), a
            full disk is recognised by looking at its file system.
    Returns:
        "no space left", "disk quota exceeded" or "file size limit reached", or None.
    """
    seen = set()
    opaque = False
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return _DISK_FULL_ERRNOS[error.errno]
        text = str(error)
        found = _DISK_FULL_TEXT.search(text)
        if found:
            code = {"28": errno.ENOSPC, "122": errno.EDQUOT, "27": errno.EFBIG}.get(found.group(1) or "")
            return _DISK_FULL_ERRNOS[code] if code else {
                "No space left on device": "no space left", "Disk quota exceeded": "disk quota exceeded",
            }.get(found.group(0), "file size limit reached")
        opaque = opaque or bool(_OPAQUE_WRITE_ERROR.search(text))
        error = error.__cause__ or error.__context__
    return _looks_full(Path(path)) if opaque and path is not None else None


def _looks_full(path: Path) -> Optional[str]:
    """For a write that failed without saying why: is the file system of `path` (about) full, or has a file
    under it reached the file size limit?"""
    folder = path if path.is_dir() else path.parent
    with contextlib.suppress(OSError):
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < 16 * 2**20:
            return "no space left"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        if any(p.stat().st_size >= limit for p in files):
            return "file size limit reached"
    return None


def no_space_error(path: str | os.PathLike, kept: str, reason: str = "no space left") -> DiskFullError:
    """The one-line error for a write that ran out of disk: what was being written, what is still intact.

    Args:
        path: the file or folder that could not be written.
        kept: what is intact, as a clause, e.g. "the previous complete checkpoint, out/checkpoint-6, is intact".
        reason: from `disk_full_reason`.
    """
    detail = "" if reason == "no space left" else f" ({reason})"
    return DiskFullError(
        f"no space left on device while writing {path}{detail}; {kept}. Free some space (or choose a folder "
        "on a disk with more room) and run the same command again."
    )


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike, kept: str, cleanup=None) -> Iterator[None]:
    """Turns a full disk inside the block into `no_space_error(path, kept)`; other errors pass unchanged.

    Args:
        path: what the block writes (named in the message, and looked at for torch.save's errors).
        kept: what is intact if the block fails (see `no_space_error`).
        cleanup: called before the error is raised, e.g. to remove a partial file that takes up space.
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        reason = disk_full_reason(e, path)
        if reason is None:
            raise
        if cleanup is not None:
            cleanup()
        raise no_space_error(path, kept, reason) from None


def expand_home(path: str | None) -> str | None:
    """`path` with a leading `~` (or `~user`) turned into the home folder, as a shell would: for path flags,
    which reach the program unexpanded when written `--flag=~/x` or quoted."""
    return os.path.expanduser(path) if isinstance(path, str) else path


def expand_home_fields(config: Any, *names: str) -> None:
    """Applies `expand_home` to the named fields of a settings object, in place."""
    for name in names:
        setattr(config, name, expand_home(getattr(config, name)))


def fsync_path(path: str | os.PathLike) -> None:
    """Flushes a file's data, or a folder's entries (renames in it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[io.IOBase]:
    """Opens a temporary file beside `path` and renames it into place only if the block succeeds.

    A crash or an exception inside the block leaves `path` as it was (absent or the old content). The file
    gets the permissions a plain `open` would give it (0644 under umask 022).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it private (0600)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staging_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a fresh hidden folder beside `final`; renames it to `final` only if the block succeeds.

    On any exception (or Ctrl-C) the staging folder is deleted and `final` is untouched. Even a hard
    kill leaves only a hidden `.NAME.partial-*` folder, never one that looks like a finished output.

    Args:
        final: the output folder.
        overwrite: replace `final` if it already exists and is not empty (otherwise that is an error,
            raised before any work starts).
    Raises:
        OutputExistsError: `final` is there, not empty, and `overwrite` is False.
    """
    final = Path(final).absolute()
    clean_leftovers(final)
    if final.exists() and (not final.is_dir() or any(final.iterdir())) and not overwrite:
        raise OutputExistsError(
            f"{final} already exists and is not empty; choose another output path or pass --overwrite=True to replace it"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{_owner()}-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; the finished folder gets normal permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    follow_umask(tmp)  # a weight file saved through safetensors is private (0600) until then
    for f in tmp.iterdir():
        if f.is_file():
            fsync_path(f)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{_owner()}-", dir=final.parent))
        os.rename(final, old / final.name)
    os.rename(tmp, final)
    with contextlib.suppress(OSError):
        fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def follow_umask(path: str | os.PathLike) -> None:
    """Gives a file, or every file under a folder, the mode a plain `open` would give it (0644 under umask 022).

    safetensors (0.8) writes each file through a private temporary file (mode 0600) that it renames into
    place, so model.safetensors and adapter_model.safetensors would be the only files of a saved model
    that other users cannot read. Every saved model and checkpoint goes through this before it is shown.
    """
    mode = 0o666 & ~current_umask()
    path = Path(path)
    for f in [path] if path.is_file() else path.rglob("*"):
        if f.is_file() and not f.is_symlink() and stat.S_IMODE(f.stat().st_mode) != mode:
            os.chmod(f, mode)


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells (Linux), so no thread sees it cleared."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _owner() -> str:
    """HOST.PID of this process, for the names of staging folders (their cleaner checks the PID on HOST only)."""
    return f"{socket.gethostname().replace('-', '_').replace('.', '_')}.{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_leftovers(final: str | os.PathLike) -> list[str]:
    """Removes what a killed `staging_dir(final)` left beside `final`, and says so on stderr.

    A `.NAME.partial-HOST.PID-*` folder of a process of this host that is gone is deleted (another host's
    are left alone: on shared storage its process cannot be checked from here). A `.NAME.old-HOST.PID-*` folder holds
    the previous `final` while the new one is renamed into place: if `final` is missing, the kill came
    between the two renames, and the previous folder is put back; otherwise it is deleted.

    Returns:
        What was done, one line per leftover.
    """
    final = Path(final).absolute()
    done = []
    if not final.parent.is_dir():
        return done
    for entry in sorted(final.parent.glob(f".{glob.escape(final.name)}.*-*")):
        m = re.fullmatch(rf"\.{re.escape(final.name)}\.(partial|old)-([^.]+)\.(\d+)-[^/]+", entry.name)
        if not m or not entry.is_dir() or m.group(2) != _owner().split(".")[0] or _alive(int(m.group(3))):
            continue
        kept = entry / final.name
        if m.group(1) == "old" and not final.exists() and kept.is_dir():
            os.rename(kept, final)
            done.append(f"{final}: put back the previous folder, which an interrupted replace had set aside in {entry}")
        else:
            what = "unfinished output" if m.group(1) == "partial" else "previous folder, already replaced"
            done.append(f"{final}: removed {entry}, the {what} of an interrupted run (process {m.group(3)})")
        shutil.rmtree(entry, ignore_errors=True)
    for line in done:
        print(line, file=sys.stderr, flush=True)
    return done


_WEIGHT_FILE = re.compile(
    r"^(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)$"
    r"|^(model|pytorch_model)\.(safetensors|bin)\.index\.json$"
)


def publish(src: Path, dst: Path) -> None:
    """Moves every file under `src` to the same place under `dst`, each by an atomic rename (with the mode
    a plain `open` gives a file: see `follow_umask`).

    For a folder that holds more than the files moved (a run's output folder also holds checkpoints), so
    it cannot be swapped whole. Weight files in `dst` (or its subfolders that `src` has) that `src` does
    not have are then removed, as `save_pretrained` does: shards of an earlier, larger model.
    """
    dst.mkdir(parents=True, exist_ok=True)
    new = set()
    for entry in sorted(src.iterdir()):
        if entry.is_dir():
            publish(entry, dst / entry.name)
            continue
        follow_umask(entry)
        fsync_path(entry)
        os.replace(entry, dst / entry.name)
        new.add(entry.name)
    for old in dst.iterdir():
        if old.is_file() and _WEIGHT_FILE.match(old.name) and old.name not in new:
            old.unlink()
    fsync_path(dst)


def sha256_of(data: str | bytes) -> str:
    """Hex SHA-256 of text (UTF-8) or bytes; used to notice a changed input file on resume."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def jdump(obj: Any, f: str | os.PathLike | io.IOBase, mode: str = "w", indent: int = 4, default=str) -> None:
    """Dumps `obj` as JSON to a path (atomically) or to an open file.

    Args:
        obj: a JSON-serialisable object; other objects go through `default` (str by default).
        f: a path or an open text file.
        mode: "w" (the default) writes atomically; "a" appends to the file.
        indent: JSON indentation.
    """
    if isinstance(f, (str, os.PathLike)):
        if "a" in mode:
            Path(f).parent.mkdir(parents=True, exist_ok=True)
            with open(f, mode, encoding="utf-8") as fh:
                json.dump(obj, fh, indent=indent, default=default, ensure_ascii=False)
            return
        with atomic_write(f, "w") as fh:
            json.dump(obj, fh, indent=indent, default=default, ensure_ascii=False)
        return
    json.dump(obj, f, indent=indent, default=default, ensure_ascii=False)


def jload(f: str | os.PathLike | io.IOBase, mode: str = "r") -> Any:
    """Loads a JSON document from a path or an open file."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, mode, encoding="utf-8") as fh:
            return json.load(fh)
    return json.load(f)
