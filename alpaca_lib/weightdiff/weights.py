"""Tensor-by-tensor access to Hugging Face checkpoint folders, for work that must not load whole models.

    >>> from alpaca_lib.weightdiff.weights import Checkpoint
    >>> ckpt = Checkpoint("path/to/llama-7b")      # reads headers / index only
    >>> ckpt.infos["lm_head.weight"].shape, ckpt.load("lm_head.weight").dtype

Reads safetensors files (memory-mapped through `safe_open`) and `.bin` files (`torch.load` with
`weights_only=True`, memory-mapped when the file is in the zip format torch has written since 1.6),
single-file or sharded through `*.index.json`. Only one file per checkpoint is open at a time, and it
is remapped every `release_every` bytes, so the resident memory of a reader stays near that budget
(or the largest tensor), not the size of a shard, let alone the model.

Writes sharded safetensors plus `model.safetensors.index.json`, streaming one tensor at a time (the
header is computed up front from the planned shapes), and hashes tensors with SHA-256 for the
weight-diff manifest. Its output folders are built with `alpaca_lib.core.fileio.staging_dir`, so nothing
is left half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.weightfiles import check_bin, safetensors_header

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"

# safetensors dtype names (https://github.com/huggingface/safetensors, format spec) <-> torch dtypes.
_ST_TO_TORCH = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_TORCH_TO_ST = {v: k for k, v in _ST_TO_TORCH.items()}


class CheckpointError(UsageError):
    """A checkpoint folder is missing, unreadable or inconsistent; the message says how to fix it."""


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it looks like, known without reading its data."""

    key: str
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def parse_size(size: int | str) -> int:
    """Turns "2GB" / "500MB" / "1GiB" / 123 into a number of bytes (decimal units as transformers uses)."""
    if isinstance(size, int):
        return size
    text = str(size).strip().upper()
    units = {"GIB": 1 << 30, "MIB": 1 << 20, "KIB": 1 << 10, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise UsageError(f"max_shard_size={size!r} is not a size; use e.g. 2GB, 500MB or a number of bytes")


def _torch_load(path: Path) -> tuple[dict, bool]:
    """Loads a `.bin` state dict safely: tensors only (no arbitrary code), memory-mapped when possible.

    Returns:
        (the state dict, whether it is memory-mapped).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True), True
    except RuntimeError as e:
        # Files in torch's legacy (pre-1.6, non-zip) format cannot be memory-mapped; they still load
        # with weights_only=True, just into memory.
        if "mmap" not in str(e) and "zip" not in str(e):
            raise CheckpointError(f"{path}: cannot read this .bin checkpoint ({e})") from e
    except Exception as e:  # unpickling errors come in several types across torch versions
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors ({type(e).__name__}: {e}). "
            "Only plain state dicts are read (torch.load(weights_only=True)); convert the checkpoint to "
            "safetensors with a trusted tool if you know where it came from"
        ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except Exception as e:
        raise CheckpointError(f"{path}: refused to load with weights_only=True ({type(e).__name__}: {e})") from e


class Checkpoint:
    """A read-only, lazily loaded view of the weights in a Hugging Face model folder.

    Args:
        folder: a folder with `model.safetensors[.index.json]` or `pytorch_model.bin[.index.json]`
            (safetensors preferred when both exist, as transformers does).
        release_every: bytes served from one mapping before it is dropped and reopened. Pages read
            through a memory map stay resident (and count in RSS) until the map is closed; reopening
            now and then keeps a multi-GB shard from piling up in memory. Reopening is cheap (a header
            read, or unpickling a `.bin`'s small metadata).

    Attributes:
        infos: key -> TensorInfo, in storage order (file by file, then by position in the file).
        files: the weight files in order.
        format: "safetensors" or "bin".
    """

    def __init__(self, folder: str | os.PathLike, release_every: int = 128 << 20):
        self.folder = Path(folder)
        self.release_every = release_every
        if not self.folder.is_dir():
            raise CheckpointError(f"{self.folder}: no such folder; give the path of a Hugging Face model folder")
        self.format, self.files = self._find_files()
        self.infos: dict[str, TensorInfo] = {}
        for file in self.files:
            for info in self._read_infos(file):
                if info.key in self.infos:
                    raise CheckpointError(
                        f"{self.folder}: tensor {info.key!r} appears in both {self.infos[info.key].file.name} and "
                        f"{file.name}; the checkpoint is inconsistent, re-download or re-save it"
                    )
                self.infos[info.key] = info
        self._check_index()
        self._open_file: Path | None = None
        self._handle = None
        self._mapped = False
        self._served = 0

    # -- discovery -------------------------------------------------------------------------------
    def _find_files(self) -> tuple[str, list[Path]]:
        for index_name, single_name, fmt in ((SAFE_INDEX, SAFE_SINGLE, "safetensors"), (BIN_INDEX, BIN_SINGLE, "bin")):
            index_path = self.folder / index_name
            if index_path.is_file():
                try:
                    weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise CheckpointError(f"{index_path}: not a valid index file (needs a 'weight_map'): {e}") from e
                self._weight_map = weight_map
                names = list(dict.fromkeys(weight_map.values()))  # first-seen order, deduplicated
                files = [self.folder / n for n in names]
                missing = [f.name for f in files if not f.is_file()]
                if missing:
                    raise CheckpointError(
                        f"{index_path} lists shard(s) {missing} that are not in {self.folder}; "
                        "the download is incomplete, fetch the missing files"
                    )
                return fmt, files
            if (self.folder / single_name).is_file():
                self._weight_map = None
                return fmt, [self.folder / single_name]
        raise CheckpointError(
            f"{self.folder}: no weights found (looked for {SAFE_INDEX}, {SAFE_SINGLE}, {BIN_INDEX}, {BIN_SINGLE}); "
            "give the folder that holds the model's config.json and weight files"
        )

    def _read_infos(self, file: Path) -> list[TensorInfo]:
        if self.format == "safetensors":
            header = safetensors_header(file)  # its size checked against the header: a cut file stops here
            entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
            try:
                entries.sort(key=lambda kv: kv[1]["data_offsets"][0])
                out = []
                for k, v in entries:
                    if v["dtype"] not in _ST_TO_TORCH:
                        raise CheckpointError(f"{file}: tensor {k!r} has dtype {v['dtype']}, which is not supported")
                    out.append(TensorInfo(k, file, tuple(int(s) for s in v["shape"]), _ST_TO_TORCH[v["dtype"]]))
                return out
            except (KeyError, TypeError, IndexError) as e:
                raise CheckpointError(f"{file}: malformed safetensors header ({e}); re-download or re-save it") from e
        check_bin(file)  # a cut-short zip is one line naming the file, not torch's error
        state, _ = _torch_load(file)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{file}: expected a dict of tensors (a state dict), found {type(state).__name__}")
        return [TensorInfo(k, file, tuple(v.shape), v.dtype) for k, v in state.items()]

    def _check_index(self) -> None:
        if self._weight_map is None:
            return
        for key, name in self._weight_map.items():
            info = self.infos.get(key)
            if info is None or info.file.name != name:
                where = "is in no shard" if info is None else f"is in {info.file.name}"
                raise CheckpointError(
                    f"{self.folder}: the index maps {key!r} to {name}, but it {where}; "
                    "the index and the shards come from different saves, re-download them together"
                )

    # -- access ----------------------------------------------------------------------------------
    def load(self, key: str) -> torch.Tensor:
        """Returns one tensor on the CPU in its stored dtype; keeps only its file open.

        The tensor may share memory with the memory-mapped file: copy it before writing into it.
        """
        info = self.infos[key]
        if self._open_file != info.file or (self._mapped and self._served >= self.release_every):
            self.close()
            if self.format == "safetensors":
                self._handle = safe_open(str(info.file), framework="pt", device="cpu")
                self._mapped = True
            else:  # a legacy (non-zip) .bin is read whole: keep it until the next file is needed
                self._handle, self._mapped = _torch_load(info.file)
            self._open_file = info.file
        self._served += info.numel * info.dtype.itemsize
        if self.format == "safetensors":
            return self._handle.get_tensor(key)
        return self._handle[key]

    def close(self) -> None:
        """Drops the open file (and with it, its mapped pages)."""
        self._handle = None
        self._open_file = None
        self._served = 0

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's data as bytes in C order and the machine's (little-endian) byte order, without a copy
    when the tensor is already contiguous on the CPU."""
    t = t.detach().cpu().contiguous()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def sha256_tensor(t: torch.Tensor) -> str:
    """SHA-256 (hex) of a tensor's bytes, as `tensor_bytes` lays them out."""
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


def plan_shards(items: Sequence[tuple[str, tuple[int, ...], torch.dtype]], max_shard_size: int) -> list[list[int]]:
    """Greedy in-order split of tensors into shards of at most `max_shard_size` bytes (a tensor larger
    than that gets a shard of its own), like transformers' sharding. Returns lists of item indices."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, shape, dtype) in enumerate(items):
        n = torch.Size(shape).numel() * dtype.itemsize
        if shards[-1] and size + n > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += n
    return [s for s in shards if s]


class SafetensorsWriter:
    """Writes planned tensors, in plan order, into sharded safetensors plus an index, one at a time.

    Args:
        folder: where to write (should be a staging folder; see `alpaca_lib.core.fileio.staging_dir`).
        items: (key, shape, dtype) in the order tensors will be given to `write`.
        max_shard_size: bytes per shard; one shard is written as `model.safetensors` with no index.
    """

    def __init__(self, folder: Path, items: Sequence[tuple[str, tuple[int, ...], torch.dtype]], max_shard_size: int):
        if sys.byteorder != "little":
            raise RuntimeError("safetensors is little-endian; writing it from a big-endian machine is not supported")
        self.folder = Path(folder)
        self.items = list(items)
        shards = plan_shards(self.items, max_shard_size)
        n = len(shards)
        names = [SAFE_SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._shards = list(zip(names, shards))
        self._shard_of = {}
        for s, (_, idx) in enumerate(self._shards):
            for i in idx:
                self._shard_of[i] = s
        self._next = 0
        self._file = None
        self._current = -1
        self.total_size = sum(torch.Size(shape).numel() * dt.itemsize for _, shape, dt in self.items)

    def _open_shard(self, s: int) -> None:
        self._close_file()
        name, idx = self._shards[s]
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for i in idx:
            key, shape, dtype = self.items[i]
            n = torch.Size(shape).numel() * dtype.itemsize
            header[key] = {"dtype": _TORCH_TO_ST[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)  # the spec pads the header with spaces to 8-byte alignment
        self._file = open(self.folder / name, "wb")
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._current = s

    def write(self, key: str, t: torch.Tensor) -> None:
        """Appends the next planned tensor (must match the plan's key, shape and dtype)."""
        i = self._next
        pkey, shape, dtype = self.items[i]
        assert (key, tuple(t.shape), t.dtype) == (pkey, tuple(shape), dtype), (key, t.shape, t.dtype, self.items[i])
        if self._shard_of[i] != self._current:
            self._open_shard(self._shard_of[i])
        self._file.write(tensor_bytes(t))
        self._next += 1

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def close(self) -> list[str]:
        """Finishes the last shard and writes the index (when sharded). Returns the file names written."""
        assert self._next == len(self.items), f"wrote {self._next} of {len(self.items)} planned tensors"
        self._close_file()
        names = [name for name, _ in self._shards]
        if len(self._shards) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {self.items[i][0]: name for name, idx in self._shards for i in idx},
            }
            with open(self.folder / SAFE_INDEX, "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)
                f.write("\n")
            names.append(SAFE_INDEX)
        return names

    def abort(self) -> None:
        """Closes the open file without finishing; the staging folder is discarded by its owner."""
        if self._file is not None:
            self._file.close()
            self._file = None
