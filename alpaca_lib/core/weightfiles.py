"""Weight files checked before anything loads them: a damaged one is one error line naming it, not a traceback.

    check_weight_files(folder, "--model_name_or_path")    # every *.safetensors and *.bin in a model folder
    check_local_weights(name, "--model_dir", gguf_file)   # the same, for a local folder not loaded from GGUF
    safetensors_header(path)                              # a safetensors file's header, its size checked

A file cut short (an interrupted copy or download), empty, or not in the format its name says is found from its
header and size alone: a few bytes read, no tensor, no torch.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

from alpaca_lib.core.errors import UsageError

_FIX = "re-download or re-create it"
_MAX_HEADER = 100_000_000  # bytes: a larger header length is not a safetensors file's


class WeightFileError(UsageError):
    """A weight file that cannot be read as what it claims to be; the message names it and says how to fix it."""


def safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file, after checking that the file holds every byte the header describes.

    Raises:
        WeightFileError: too short, a header that is not JSON, offsets that are not numbers, or a file shorter or
            longer than the header says.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise WeightFileError(f"{path}: {size} bytes, too short to be a safetensors file; {_FIX}")
        (n,) = struct.unpack("<Q", raw_len)
        if n > _MAX_HEADER or 8 + n > size:
            raise WeightFileError(f"{path}: its header length ({n} bytes) does not fit the file's {size} bytes: the file "
                                  f"is cut short or is not safetensors; {_FIX}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WeightFileError(f"{path}: unreadable safetensors header ({e}); {_FIX}") from e
    if not isinstance(header, dict):
        raise WeightFileError(f"{path}: its safetensors header is not a mapping of tensors; {_FIX}")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise WeightFileError(f"{path}: malformed safetensors header ({e}); {_FIX}") from e
    if 8 + n + end != size:
        state = "cut short" if 8 + n + end > size else "longer than its header says"
        raise WeightFileError(f"{path}: {state}: its header describes {8 + n + end} bytes, the file has {size}; {_FIX}")
    return header


def check_bin(path: str | os.PathLike) -> None:
    """Checks that a `.bin` checkpoint in torch's zip format is whole (its directory, at the end, is readable);
    files in torch's older, non-zip format are left to torch.load."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise WeightFileError(f"{path}: empty (0 bytes); {_FIX}")
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    if not zipped:
        return
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise WeightFileError(f"{path}: a torch checkpoint that is cut short or damaged ({e}); {_FIX}") from e


def check_weight_files(folder: str | os.PathLike, flag: str) -> None:
    """Checks every `*.safetensors` and `*.bin` file directly in a model folder, before a model loads from it.

    Raises:
        WeightFileError: naming the flag, the file, what is wrong with it and the fix.
    """
    for path in sorted(Path(folder).expanduser().iterdir()):
        try:
            if path.suffix == ".safetensors" and path.is_file():
                safetensors_header(path)
            elif path.suffix == ".bin" and path.is_file():
                check_bin(path)
        except WeightFileError as e:
            raise WeightFileError(f"{flag} {folder}: {e}") from None


def check_local_weights(name: str, flag: str, gguf_file: str | None = None) -> None:
    """`check_weight_files` for a model that loads from a local folder, just before it loads.

    A hub id is left alone (its files are not on disk until it loads), and so is a model loaded from a GGUF
    file (`gguf_file`): its weights are neither safetensors nor `.bin`.

    Raises:
        WeightFileError: as `check_weight_files`.
    """
    if gguf_file is None and Path(name).expanduser().is_dir():
        check_weight_files(name, flag)
