"""The preprocessing cache: a data set's tokenized form on disk, keyed on the data, the tokenizer and the settings.

    from alpaca_lib.data.cache import encode_file
    encoded = encode_file(open_source("alpaca_data.json"), tokenizer, 512, cache_dir=default_cache_dir())
    encoded.stats["cache"]                           # "hit", "miss" or "off"

An entry is one file named by `cache_key`: the data's own key (`DataSource.key`: its bytes, split and columns),
a fingerprint of the tokenizer, the max length, the drop options, the prompt format (for other formats than
alpaca: `PromptFormat.settings()`, and under chat the tokenizer's chat template) and `CACHE_FORMAT_VERSION`;
under chat it also holds each token's loss mask. It carries its
sizes and CRC-32 checksums; an empty, truncated or garbled entry is named in a warning and rebuilt, and a disk
that fills up while writing one leaves training going on without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Optional, Sequence

import numpy as np

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import atomic_write, disk_full_reason
from alpaca_lib.core.locking import output_lock
from alpaca_lib.data.formats import ALPACA, PromptFormat, has_generation_marks
from alpaca_lib.data.sources import DataSource, open_source
from alpaca_lib.data.tokenizing import BatchEncoder, DropOptions, EncodedData, encode_batches

logger = logging.getLogger(__name__)

# Bump when the cached arrays would change for the same data, tokenizer and max length.
CACHE_FORMAT_VERSION = 2


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of everything about a tokenizer that changes token ids or the masked lengths."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation and padding are set anew by each call (the ids of a call do not depend on the last
        # one's), so they are left out of the digest; the tokenizer itself is not touched.
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(type(tokenizer).__name__.encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(json.dumps([tokenizer.pad_token_id, tokenizer.eos_token, len(tokenizer)]).encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "alpaca" / "preprocess"


class CacheDamaged(Exception):
    """A preprocessing cache entry that cannot be trusted (empty, truncated, garbled); it is rebuilt."""


# A cache entry is one file: a fixed-size header (magic, then the length and CRC-32 of a JSON holding the
# sizes, the arrays' CRC-32 and the stats), then the token ids (int32), the offsets (int64), the masked
# lengths (int32) and, under chat only (the header says "loss_mask": true), one byte per token: 1 where it is
# in the loss. The ids are memory-mapped when read: a large data set costs page cache, not process memory.
_CACHE_MAGIC = b"ALPACA-TOKENS\x00\x00\x02"
_HEADER_SPACE = 1 << 16


def cache_key(source: DataSource | str | os.PathLike, tokenizer, max_length: int,
              drop: DropOptions = DropOptions(), prompt_format: Optional[PromptFormat] = None) -> str:
    """A digest of the data (`DataSource.key`: its bytes, split and columns), the tokenizer, the max length,
    the drop options and the prompt format (alpaca, the default, adds nothing: its keys are those of the
    versions before formats existed)."""
    if not isinstance(source, DataSource):
        source = open_source(source)
    h = hashlib.sha256()
    h.update(source.key().encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(f"max_length={max_length};format={CACHE_FORMAT_VERSION};drop={drop}".encode())
    if prompt_format is not None and prompt_format.name != ALPACA:
        described = dict(prompt_format.settings())
        if prompt_format.is_chat:  # the template is not part of the tokenizer's fingerprint
            described["chat_template"] = getattr(tokenizer, "chat_template", None)
            if has_generation_marks(tokenizer):  # entries from before the end of turn was added to marked turns
                described["generation_marks"] = "end of turn added"
        h.update(f";prompt_format={json.dumps(described, sort_keys=True)}".encode())
    return h.hexdigest()[:32]


def _write_header(f: BinaryIO, n: int, tokens: int, crc: int, stats: dict, loss_mask: bool = False) -> None:
    fields = {"examples": n, "tokens": tokens, "crc32": crc, "stats": stats}
    if loss_mask:  # only then: an alpaca entry's header stays as it was
        fields["loss_mask"] = True
    header = json.dumps(fields).encode()
    if len(_CACHE_MAGIC) + 12 + len(header) > _HEADER_SPACE:
        raise ValueError("preprocessing cache header too large")
    f.seek(0)
    f.write(_CACHE_MAGIC + struct.pack("<QI", len(header), zlib.crc32(header)) + header)


def _write_tail(f: BinaryIO, data: EncodedData, crc: int) -> int:
    arrays = [data.offsets.astype(np.int64, copy=False), data.source_lens.astype(np.int32, copy=False)]
    if data.loss_mask is not None:
        arrays.append(np.asarray(data.loss_mask, dtype=bool).astype(np.uint8))
    for array in arrays:
        buf = array.tobytes()
        crc = zlib.crc32(buf, crc)
        f.write(buf)
    return crc


def load_encoded(path: Path) -> EncodedData:
    """Reads a cache entry, checking its size and CRC; the ids stay memory-mapped.

    Raises:
        FileNotFoundError: no entry.
        CacheDamaged: the entry is empty, truncated, garbled or of another format.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size == 0:
            raise CacheDamaged("empty file")
        head = f.read(len(_CACHE_MAGIC) + 12)
        if len(head) < len(_CACHE_MAGIC) + 12 or head[: len(_CACHE_MAGIC)] != _CACHE_MAGIC:
            raise CacheDamaged("not a cache file of this version")
        header_len, header_crc = struct.unpack("<QI", head[len(_CACHE_MAGIC):])
        raw_header = f.read(min(header_len, _HEADER_SPACE))
        if zlib.crc32(raw_header) != header_crc:
            raise CacheDamaged("header checksum mismatch (garbled bytes)")
        try:
            header = json.loads(raw_header)
            n, tokens, crc, stats = header["examples"], header["tokens"], header["crc32"], header["stats"]
            has_mask = header.get("loss_mask", False) is True
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CacheDamaged(f"unreadable header: {e}") from None
        expected = _HEADER_SPACE + 4 * tokens + 8 * (n + 1) + 4 * n + (tokens if has_mask else 0)
        if size != expected:
            raise CacheDamaged(f"{size} bytes, expected {expected} (truncated or padded)")
        f.seek(_HEADER_SPACE)
        actual = 0
        for chunk in iter(lambda: f.read(1 << 24), b""):
            actual = zlib.crc32(chunk, actual)
        if actual != crc:
            raise CacheDamaged("checksum mismatch (garbled bytes)")
        f.seek(_HEADER_SPACE + 4 * tokens)
        offsets = np.fromfile(f, dtype=np.int64, count=n + 1)
        source_lens = np.fromfile(f, dtype=np.int32, count=n)
        mask = np.fromfile(f, dtype=np.uint8, count=tokens).astype(bool) if has_mask else None
    if tokens:
        ids = np.memmap(path, dtype=np.int32, mode="r", offset=_HEADER_SPACE, shape=(tokens,))
    else:
        ids = np.zeros(0, np.int32)
    if offsets[0] != 0 or offsets[-1] != tokens or np.any(np.diff(offsets) <= 0):
        raise CacheDamaged("inconsistent offsets")
    return EncodedData(ids, offsets, source_lens, stats, mask)


def _encode_to_cache(path: Path, batches: Iterable[Sequence[dict]], tokenizer, max_length: int,
                     drop: DropOptions, prompt_format: Optional[PromptFormat] = None) -> None:
    with atomic_write(path, "wb") as f:
        f.write(b"\0" * _HEADER_SPACE)
        encoder = BatchEncoder(tokenizer, max_length, drop, sink=f, prompt_format=prompt_format)
        for batch in batches:
            encoder.add(batch)
        data = encoder.finish()
        crc = _write_tail(f, data, encoder.crc)
        _write_header(f, len(data), int(data.offsets[-1]), crc, data.stats, data.loss_mask is not None)


@contextlib.contextmanager
def _building(cache_file: Path) -> Iterator[None]:
    """Holds the build lock of one cache entry (`core.locking.output_lock` on `.<entry>.lock`, waiting for it).

    Of the processes that miss an entry at the same time (under torchrun, one per node, all sharing one cache
    folder) the first builds it and the others wait, then read what it wrote. Where no lock can be taken (a
    read-only folder, a file system without flock) the entry is built without one, as each process would alone.
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(output_lock(cache_file.parent, "train.py (building a preprocessing cache entry)",
                                            name=f".{cache_file.name}.lock", wait=True))
        except (UsageError, OSError) as e:
            logger.warning("could not lock preprocessing cache entry %s (%s); building it without a lock",
                           cache_file, e)
        yield


def encode_file(
    data_path: str | os.PathLike | DataSource,
    tokenizer,
    max_length: Optional[int] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    records: Optional[Sequence[dict]] = None,
    drop: DropOptions = DropOptions(),
    prompt_format: Optional[PromptFormat] = None,
) -> EncodedData:
    """Loads (or reuses from the cache) the tokenized form of a training data set.

    A cache entry that is empty, truncated or garbled is reported by path and rebuilt. Processes that miss the
    same entry at once (one per node under torchrun, sharing the folder) build it once: the others wait, then
    read it (`_building`).

    Args:
        data_path: the data: a path or hub id (`alpaca_lib.data.sources.open_source`), or a `DataSource`.
        tokenizer: the training tokenizer (pad token set).
        max_length: truncation length (default: `tokenizer.model_max_length`).
        cache_dir: folder for cached arrays; None or "" disables the cache.
        records: the already loaded records of `data_path`, to skip reading it again.
        drop: examples to leave out beyond the original's (none by default).
        prompt_format: `--prompt_template` (`alpaca_lib.data.formats.load_prompt_format`); None is alpaca.
    Returns:
        `EncodedData`; `stats["cache"]` says "hit", "miss" or "off".
    """
    max_length = max_length or tokenizer.model_max_length
    source = data_path if isinstance(data_path, DataSource) else open_source(data_path)

    def batches():  # a fresh pass over the data each time (a failed cache write may have used one up)
        return [records] if records is not None else source.batches()

    if not cache_dir:
        data = encode_batches(batches(), tokenizer, max_length, drop, prompt_format=prompt_format)
        data.stats["cache"] = "off"
        return data
    cache_file = Path(cache_dir) / f"{cache_key(source, tokenizer, max_length, drop, prompt_format)}.bin"
    try:
        data = load_encoded(cache_file)
        data.stats["cache"] = "hit"
        return data
    except FileNotFoundError:
        pass
    except (CacheDamaged, OSError) as e:  # a damaged cache is rebuilt, never fatal
        logger.warning("preprocessing cache %s is damaged (%s); rebuilding it", cache_file, e)
    with _building(cache_file):
        # Another process (another node sharing this folder) may have built it while this one waited for the lock.
        with contextlib.suppress(FileNotFoundError, CacheDamaged, OSError):
            data = load_encoded(cache_file)
            data.stats["cache"] = "hit"
            return data
        try:
            _encode_to_cache(cache_file, batches(), tokenizer, max_length, drop, prompt_format)
            data = load_encoded(cache_file)
        except (OSError, CacheDamaged) as e:
            if disk_full_reason(e) is not None:  # the entries already there are intact: atomic writes
                logger.warning("no space left on device while writing %s (%s); going on without the preprocessing "
                               "cache (free some space to use it again)", cache_file, disk_full_reason(e))
            else:
                logger.warning("could not write preprocessing cache %s (%s); going on without it", cache_file, e)
            data = encode_batches(batches(), tokenizer, max_length, drop, prompt_format=prompt_format)
    data.stats["cache"] = "miss"
    return data
