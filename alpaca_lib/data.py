"""Supervised Alpaca data: loading and checking records, tokenizing with the prompt masked, caching.

    from alpaca_lib.data import load_records, tokenize_records
    records = load_records("alpaca_data.json")
    encoded = tokenize_records(records, tokenizer)   # same ids and labels as the original preprocess()

The masking is the original algorithm: labels are the input ids of `source + target` with the first
`len(tokenize(source))` positions set to -100, where both strings are tokenized separately, truncated
to `model_max_length`, and a source's length counts its non-pad tokens. It is computed here in
batches (one call per batch instead of two calls per example) and cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from alpaca_lib.modeling import IGNORE_INDEX
from alpaca_lib.errors import UsageError
from alpaca_lib.fileio import atomic_write
from utils import format_prompt

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("instruction", "output")
OPTIONAL_KEYS = ("input",)
# Bump when the cached arrays would change for the same file, tokenizer and max length.
CACHE_FORMAT_VERSION = 1
TOKENIZE_BATCH_SIZE = 1024


class DataError(UsageError):
    """A training file that cannot be used as it is; the message says where and how to fix it."""


def _expected(required: Sequence[str], optional: Sequence[str]) -> str:
    names = " and ".join(f"'{k}'" for k in required)
    return names + (f" (and optionally {', '.join(repr(k) for k in optional)})" if optional else "")


def _check_record(path: str, record: Any, where: str, required: Sequence[str], optional: Sequence[str]) -> dict:
    expected = _expected(required, optional)
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where} is a {type(record).__name__}, expected an object with {expected}.")
    missing = [k for k in required if k not in record]
    if missing:
        raise DataError(f"{path}: {where} has keys {sorted(record)}; expected {expected}. Missing: {', '.join(missing)}.")
    for key in (*required, *optional):
        if key in record and not isinstance(record[key], str):
            raise DataError(
                f"{path}: {where} field '{key}' is a {type(record[key]).__name__} ({record[key]!r:.60}), "
                f"expected a string. Convert it to text, or use \"\" for an empty input."
            )
    return record


def load_records(
    path: str | os.PathLike,
    required: Sequence[str] = REQUIRED_KEYS,
    optional: Sequence[str] = OPTIONAL_KEYS,
    flag: str = "--data_path",
) -> List[dict]:
    """Reads and checks an Alpaca training file: a JSON list of records, or JSON Lines.

    Args:
        path: `.json` holding a list of {"instruction", "input", "output"} objects, or JSON Lines
            (one object per line; chosen by content, not by extension).
        required, optional: the string fields each record must have, and those it may have (other keys
            are kept as they are). The defaults are a training file's.
        flag: the command-line flag that named the file, for the messages.
    Returns:
        The records, each with the required fields (and any optional one) as strings.
    Raises:
        DataError: naming the file, the record index or line, and the problem.
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file. Pass {flag} pointing to an Alpaca JSON or JSONL file.") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}). Save the file as UTF-8 JSON.") from None
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{path}: the file is empty; expected a JSON list of records or JSON Lines.")

    if stripped[0] == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
        if not data:
            raise DataError(f"{path}: the list holds no records.")
        return [_check_record(path, r, f"record {i}", required, optional) for i, r in enumerate(data)]

    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (a JSON file must be one list: [ {...}, {...} ])" if lineno == 1 else ""
            raise DataError(f"{path}: invalid JSON on line {lineno}, column {e.colno}: {e.msg}{hint}.") from None
        where = f"record {len(records)} (line {lineno})"
        records.append(_check_record(path, record, where, required, optional))
    return records


def sources_and_targets(records: Sequence[dict], eos_token: str) -> tuple[List[str], List[str]]:
    """The original's strings: the formatted prompt, and `output + eos_token`."""
    sources = [format_prompt(r) for r in records]
    targets = [f"{r['output']}{eos_token}" for r in records]
    return sources, targets


@dataclass
class EncodedData:
    """Tokenized examples in flat arrays: example i is `input_ids[offsets[i]:offsets[i+1]]`."""

    input_ids: np.ndarray  # int32, all examples concatenated
    offsets: np.ndarray  # int64, len = n + 1
    source_lens: np.ndarray  # int32, masked prefix length of each example
    stats: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def example(self, i: int) -> tuple[np.ndarray, int]:
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]], int(self.source_lens[i])


def _batched_encodings(tokenizer, texts: Sequence[str], max_length: int):
    """Yields (ids, encoding) per text, truncated like `tokenizer(text, max_length=..., truncation=True)`.

    `encoding` is the fast tokenizer's `tokenizers.Encoding` (token/char alignment), or None.
    """
    for start in range(0, len(texts), TOKENIZE_BATCH_SIZE):
        batch = list(texts[start : start + TOKENIZE_BATCH_SIZE])
        enc = tokenizer(batch, max_length=max_length, truncation=True, return_attention_mask=False)
        encodings = enc.encodings if getattr(enc, "_encodings", None) else [None] * len(batch)
        yield from zip(enc["input_ids"], encodings)


def _batched_ids(tokenizer, texts: Sequence[str], max_length: int) -> List[List[int]]:
    """Token ids of each text, truncated like `tokenizer(text, max_length=..., truncation=True)`."""
    return [ids for ids, _ in _batched_encodings(tokenizer, texts, max_length)]


_LOCAL_NORMALIZERS = {"Replace", "Prepend", "Sequence"}
_WORD_PRE_TOKENIZERS = {"ByteLevel", "Metaspace", "Split", "Sequence"}


def _component_types(component) -> set:
    if component is None:
        return set()
    state = json.loads(component.__getstate__())
    found, stack = set(), [state]
    while stack:
        node = stack.pop()
        found.add(node.get("type"))
        for key in ("normalizers", "pretokenizers", "processors"):
            stack.extend(node.get(key) or [])
    return found


def prompt_tokens_readable_from_example(tokenizer) -> bool:
    """Whether a prompt's tokens can be read off its example's tokens where a token boundary falls at its end.

    That holds for BPE: merges only ever grow tokens, so if no token of `source + target` crosses the end
    of `source`, no merge crossed it, and the merges left of it are exactly those of `source` alone —
    provided normalization and pre-tokenization are character-local (LLaMA, OPT/GPT-2, SmolLM2
    tokenizers) and special tokens are added only in front. Then each example is tokenized once, not
    twice; examples without such a clean boundary still get the second tokenization.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.model).__name__ != "BPE" or getattr(backend.model, "dropout", None):
        return False
    if not _component_types(backend.normalizer) <= _LOCAL_NORMALIZERS:
        return False
    if not _component_types(backend.pre_tokenizer) <= _WORD_PRE_TOKENIZERS:
        return False
    with_special = tokenizer("a b")["input_ids"]
    plain = tokenizer("a b", add_special_tokens=False)["input_ids"]
    return with_special[len(with_special) - len(plain):] == plain  # specials only in front


def encode_pairs(
    sources: Sequence[str], targets: Sequence[str], tokenizer, max_length: int
) -> tuple[List[List[int]], List[int], int]:
    """The original masking, batched: ids of `source + target` and each example's masked prefix length.

    Returns:
        (example ids, source lengths, number of examples whose tokenized source is not a prefix of the
        tokenized example, i.e. the tokenizer merged tokens across the prompt/response boundary).
    """
    pad_id = tokenizer.pad_token_id
    fast = prompt_tokens_readable_from_example(tokenizer)
    example_ids, source_lens, pending = [], [], []
    texts = [s + t for s, t in zip(sources, targets)]
    for i, (ids, encoding) in enumerate(_batched_encodings(tokenizer, texts, max_length)):
        example_ids.append(ids)
        source_lens.append(None)
        p = len(sources[i])
        if fast and encoding is not None and p > 0 and not sources[i][-1].isspace():
            k = encoding.char_to_token(p)
            if k is not None and encoding.token_to_chars(k)[0] == p and encoding.char_to_token(p - 1) == k - 1:
                prefix = ids[:k]
                source_lens[i] = k if pad_id is None or pad_id not in prefix else sum(t != pad_id for t in prefix)
                continue
        pending.append(i)

    # The rest (merged or truncated boundaries, other tokenizers): tokenize the source too, as the original.
    merges = 0
    source_ids = _batched_ids(tokenizer, [sources[i] for i in pending], max_length)
    for i, src in zip(pending, source_ids):
        # As the original: the masked length counts the non-pad tokens of the truncated source.
        source_lens[i] = len(src) if pad_id is None else sum(1 for t in src if t != pad_id)
        merges += example_ids[i][: len(src)] != src
    return example_ids, source_lens, merges


def tokenize_records(records: Sequence[dict], tokenizer, max_length: Optional[int] = None) -> EncodedData:
    """Tokenizes records with the prompt masked, dropping examples left with no label to learn.

    Args:
        records: checked Alpaca records (see `load_records`).
        tokenizer: the training tokenizer, with its pad token already set.
        max_length: truncation length (default: `tokenizer.model_max_length`).
    Returns:
        `EncodedData` with stats: `examples`, `kept`, `dropped_no_response` (prompt fills the max length),
        `boundary_merges` (the tokenized prompt is not a prefix of the tokenized example).
    """
    max_length = max_length or tokenizer.model_max_length
    sources, targets = sources_and_targets(records, tokenizer.eos_token)
    example_ids, all_source_lens, merges = encode_pairs(sources, targets, tokenizer, max_length)

    kept_ids, source_lens, dropped_indices = [], [], []
    for i, (ids, source_len) in enumerate(zip(example_ids, all_source_lens)):
        if source_len >= len(ids):
            dropped_indices.append(i)
            continue
        kept_ids.append(ids)
        source_lens.append(source_len)

    lengths = np.fromiter((len(x) for x in kept_ids), dtype=np.int64, count=len(kept_ids))
    offsets = np.zeros(len(kept_ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for ids in kept_ids for t in ids), dtype=np.int32, count=int(offsets[-1]))
    source_lens = np.asarray(source_lens, dtype=np.int32)
    stats = {
        "examples": len(records),
        "kept": len(kept_ids),
        "dropped_no_response": len(dropped_indices),
        "dropped_indices": dropped_indices[:20],
        "boundary_merges": int(merges),
        "tokens": int(offsets[-1]),
        "loss_tokens": int(offsets[-1] - source_lens.astype(np.int64).sum()),
    }
    return EncodedData(flat, offsets, source_lens, stats)


def labels_for(ids: np.ndarray, source_len: int) -> np.ndarray:
    """Input ids with the first `source_len` positions set to IGNORE_INDEX."""
    labels = ids.astype(np.int64, copy=True)
    labels[:source_len] = IGNORE_INDEX
    return labels


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


def cache_key(data_path: str | os.PathLike, tokenizer, max_length: int) -> str:
    h = hashlib.sha256()
    with open(data_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(f"max_length={max_length};format={CACHE_FORMAT_VERSION}".encode())
    return h.hexdigest()[:32]


def save_encoded(path: Path, data: EncodedData) -> None:
    with atomic_write(path, "wb") as f:
        np.savez(f, input_ids=data.input_ids, offsets=data.offsets, source_lens=data.source_lens,
                 stats=np.frombuffer(json.dumps(data.stats).encode(), dtype=np.uint8))


def load_encoded(path: Path) -> EncodedData:
    with np.load(path) as z:
        return EncodedData(z["input_ids"], z["offsets"], z["source_lens"], json.loads(z["stats"].tobytes()))


def encode_file(
    data_path: str | os.PathLike,
    tokenizer,
    max_length: Optional[int] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    records: Optional[Sequence[dict]] = None,
) -> EncodedData:
    """Loads (or reuses from the cache) the tokenized form of a training file.

    Args:
        data_path: the Alpaca JSON/JSONL file.
        tokenizer: the training tokenizer (pad token set).
        max_length: truncation length (default: `tokenizer.model_max_length`).
        cache_dir: folder for cached arrays; None or "" disables the cache.
        records: the already loaded records of `data_path`, to skip reading it again.
    Returns:
        `EncodedData`; `stats["cache"]` says "hit", "miss" or "off".
    """
    max_length = max_length or tokenizer.model_max_length
    cache_file = None
    if cache_dir:
        cache_file = Path(cache_dir) / f"{cache_key(data_path, tokenizer, max_length)}.npz"
        if cache_file.exists():
            try:
                data = load_encoded(cache_file)
                data.stats["cache"] = "hit"
                return data
            except (OSError, ValueError, KeyError) as e:  # a damaged cache is rebuilt, not fatal
                logger.warning("ignoring unreadable preprocessing cache %s (%s)", cache_file, e)
    if records is None:
        records = load_records(data_path)
    data = tokenize_records(records, tokenizer, max_length)
    if cache_file is not None:
        try:
            save_encoded(cache_file, data)
        except OSError as e:
            logger.warning("could not write preprocessing cache %s (%s); going on without it", cache_file, e)
    data.stats["cache"] = "miss" if cache_file is not None else "off"
    return data
