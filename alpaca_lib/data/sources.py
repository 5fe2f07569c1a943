"""Where training records come from: Alpaca JSON/JSONL, parquet, CSV, a `save_to_disk` folder or a hub id.

    from alpaca_lib.data.sources import open_source
    source = open_source("databricks/databricks-dolly-15k", columns="input=context,output=response").check()
    for batch in source.batches():        # lists of {"instruction", "input", "output"} records, checked
        ...

JSON and JSON Lines are read here, a chunk at a time, as editors save them (UTF-8 with or without a
BOM, UTF-16 or UTF-32 with a BOM). Everything else goes through the `datasets` library: parquet and
CSV files are streamed from the file itself (no converted copy to go stale), a `save_to_disk` folder
and a hub dataset are memory-mapped Arrow. Memory stays bounded by the batch size, whatever the
size of the data. `DataSource.key()` names the data exactly (the bytes of its files, which for a
`save_to_disk` folder include the dataset's fingerprint and for a hub dataset sit under its
revision), so a preprocessing cache keyed on it is never served stale.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from alpaca_lib.core.errors import UsageError

ALPACA_FIELDS = ("instruction", "input", "output")
REQUIRED_KEYS = ("instruction", "output")
OPTIONAL_KEYS = ("input",)
BATCH_SIZE = 4096  # records per batch: large enough for batched tokenizing, small enough for any RAM
_READ_CHUNK = 1 << 20  # bytes read at a time from a JSON file
_TABULAR = {".parquet": "parquet", ".csv": "csv"}
_BOMS = (  # longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class DataError(UsageError):
    """A training file that cannot be used as it is; the message says where and how to fix it."""


def _expected(required: Sequence[str], optional: Sequence[str]) -> str:
    names = " and ".join(f"'{k}'" for k in required)
    return names + (f" (and optionally {', '.join(repr(k) for k in optional)})" if optional else "")


@dataclass(frozen=True)
class RecordMessages:
    """How a reader words each way a record can be wrong: `str.format` templates.

    Every template may use {where}, {expected} (the fields, as `_expected` words them), {keys} (the record's
    sorted keys), {type} (the record's type in `not_object`, else the offending value's) and {key}, {value}
    (the offending field and its value, None when absent); `missing` also {missing} (the absent fields).
    """

    not_object: str = "{where} is a {type}, expected an object with {expected}."
    # None: an absent field reads as one that is not a string, in field order.
    missing: Optional[str] = "{where} has keys {keys}; expected {expected}. Missing: {missing}."
    not_string: str = ("{where} field '{key}' is a {type} ({value!r:.60}), expected a string. "
                       "Convert it to text, or use \"\" for an empty input.")
    blank: str = "{where} field '{key}' is blank; expected some text."


def check_record(record: Any, where: str, fields: Sequence[str], optional: Sequence[str] = (), *,
                 non_blank: Sequence[str] = (), messages: RecordMessages = RecordMessages(),
                 error: type[UsageError] = DataError) -> dict:
    """The one check of an Alpaca-style record, for every reader: an object whose `fields` are strings.

    Args:
        record: the decoded JSON value.
        where: where it is, opening each message, e.g. "data.json: record 3".
        fields: the fields to check, in the order their problems are reported.
        optional: those of `fields` that may be absent.
        non_blank: those of `fields` that must hold more than whitespace.
        messages: the reader's wording.
        error: the error type raised.
    Returns:
        `record`, unchanged.
    Raises:
        `error` (DataError): the first problem, worded by `messages`.
    """
    required = [k for k in fields if k not in optional]
    words = dict(where=where, expected=_expected(required, [k for k in fields if k in optional]))
    if not isinstance(record, dict):
        raise error(messages.not_object.format(**words, type=type(record).__name__, keys=None, key=None, value=None))
    words["keys"] = sorted(record)
    missing = [k for k in required if k not in record]
    if missing and messages.missing is not None:
        raise error(messages.missing.format(**words, missing=", ".join(missing), key=missing[0], value=None,
                                            type="NoneType"))
    for key in fields:
        value = record.get(key)
        if (key in record or key not in optional) and not isinstance(value, str):
            raise error(messages.not_string.format(**words, key=key, value=value, type=type(value).__name__))
    for key in non_blank:
        if key in record and not record[key].strip():
            raise error(messages.blank.format(**words, key=key, value=record[key], type="str"))
    return record


# ---------------------------------------------------------------------------------------------------
# JSON and JSON Lines, streamed


def _decoded_chunks(path: str, flag: str) -> Iterator[str]:
    """The file's text a chunk at a time, decoded by its BOM (UTF-8 without one); clear errors otherwise."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file. Pass {flag} pointing to an Alpaca JSON or JSONL file.") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a JSON file.") from None
    with f:
        head = f.read(4)
        encoding, bom = "utf-8", b""
        for mark, name in _BOMS:
            if head.startswith(mark):
                encoding, bom = name, mark
                break
        decoder = codecs.getincrementaldecoder(encoding)("strict")
        pending, offset = head[len(bom):], len(bom)  # offset: file position of pending[0]
        while True:
            chunk = f.read(_READ_CHUNK)
            data = pending + chunk
            buffered = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=not chunk)
            except UnicodeDecodeError as e:
                at = offset - buffered + e.start
                hint = " It looks like UTF-16 without a BOM." if b"\x00" in data[:64] else ""
                raise DataError(
                    f"{path}: not valid {encoding.upper()} text at byte offset {at} ({e.reason}).{hint} "
                    "Re-save the file as UTF-8 (in most editors: Save with Encoding -> UTF-8), e.g. "
                    f"`iconv -f WINDOWS-1252 -t UTF-8 {path} > fixed.json` if it came from a Windows tool."
                ) from None
            offset += len(data)
            pending = b""
            if text:
                yield text
            if not chunk:
                return


class _JsonListReader:
    """Yields the items of a JSON list one at a time from decoded chunks, tracking lines for messages."""

    def __init__(self, path: str, chunks: Iterator[str], first: str):
        self.path, self.chunks = path, chunks
        self.buf, self.pos = first, 0
        self.line = 1  # line number of buf[0]
        self.col0 = 0  # column of buf[0] on that line (0-based)
        self.eof = False
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = next(self.chunks, None)
        if chunk is None:
            self.eof = True
            return False
        # Drop what was consumed, keeping count of its lines and the column where buf now starts.
        done = self.buf[: self.pos]
        newlines = done.count("\n")
        if newlines:
            self.line += newlines
            self.col0 = len(done) - done.rfind("\n") - 1
        else:
            self.col0 += len(done)
        self.buf, self.pos = self.buf[self.pos:] + chunk, 0
        return True

    def _where(self, pos: int) -> str:
        before = self.buf[:pos]
        newlines = before.count("\n")
        col = (pos - before.rfind("\n")) if newlines else self.col0 + pos + 1
        return f"line {self.line + newlines}, column {col}"

    def _skip_space(self) -> Optional[str]:
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return None

    def _error(self, pos: int, msg: str) -> DataError:
        return DataError(f"{self.path}: invalid JSON at {self._where(pos)}: {msg}.")

    def __iter__(self) -> Iterator[Any]:
        self._skip_space()
        self.pos += 1  # the "["
        first = True
        while True:
            c = self._skip_space()
            if c == "]":
                self.pos += 1
                break
            if c is None:
                raise self._error(self.pos, "the list is not closed (expected ']')")
            if not first:
                if c != ",":
                    raise self._error(self.pos, "expected ',' or ']' after a record")
                self.pos += 1
                c = self._skip_space()
                if c is None:
                    raise self._error(self.pos, "the list is not closed (expected a record or ']')")
            first = False
            while True:
                try:
                    item, end = self.decoder.raw_decode(self.buf, self.pos)
                    # A number or literal cut at the end of the chunk could decode short: read on to be sure.
                    if end == len(self.buf) and not self.eof and self._more():
                        continue
                    break
                except json.JSONDecodeError as e:
                    if not self._more():
                        raise self._error(e.pos, e.msg) from None
            self.pos = end
            yield item
        if self._skip_space() is not None:
            raise self._error(self.pos, "extra data after the closing ']'")


def iter_json_records(
    path: str | os.PathLike,
    required: Sequence[str] = REQUIRED_KEYS,
    optional: Sequence[str] = OPTIONAL_KEYS,
    flag: str = "--data_path",
) -> Iterator[dict]:
    """Checked records of a JSON list or JSON Lines file (chosen by content), one at a time.

    Raises:
        DataError: naming the file, the record index or line (or byte offset), and the problem.
    """
    path = str(path)
    chunks = _decoded_chunks(path, flag)
    first = ""
    for chunk in chunks:
        first += chunk
        if first.strip():
            break
    stripped = first.lstrip()
    if not stripped:
        raise DataError(f"{path}: the file is empty; expected a JSON list of records or JSON Lines.")
    if stripped[0] == "[":
        n = 0
        for n, record in enumerate(_JsonListReader(path, chunks, first), start=1):
            yield check_record(record, f"{path}: record {n - 1}", [*required, *optional], optional)
        if n == 0:
            raise DataError(f"{path}: the list holds no records.")
        return
    index, lineno, rest = 0, 0, first
    for piece in _lines(chunks, rest):
        lineno += 1
        if not piece.strip():
            continue
        try:
            record = json.loads(piece)
        except json.JSONDecodeError as e:
            hint = " (a JSON file must be one list: [ {...}, {...} ])" if lineno == 1 else ""
            raise DataError(f"{path}: invalid JSON on line {lineno}, column {e.colno}: {e.msg}{hint}.") from None
        yield check_record(record, f"{path}: record {index} (line {lineno})", [*required, *optional], optional)
        index += 1


def _lines(chunks: Iterator[str], first: str) -> Iterator[str]:
    buf = first
    for chunk in chunks:
        buf += chunk
        *complete, buf = buf.split("\n")
        yield from complete
    yield from buf.split("\n")


# ---------------------------------------------------------------------------------------------------
# Column mapping


def parse_columns(spec: Optional[str | Dict[str, str]]) -> Dict[str, str]:
    """`instruction=instruction,input=context,output=response` -> {alpaca field: source column}.

    Fields not named keep their own name. An empty spec maps each field to itself.
    """
    mapping = {k: k for k in ALPACA_FIELDS}
    if not spec:
        return mapping
    if isinstance(spec, dict):
        pairs = list(spec.items())
    else:
        pairs = []
        for part in str(spec).split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise DataError(
                    f"--data_columns: '{part.strip()}' is not FIELD=COLUMN; write e.g. "
                    "--data_columns instruction=instruction,input=context,output=response"
                )
            key, _, column = part.partition("=")
            pairs.append((key.strip(), column.strip()))
    for key, column in pairs:
        if key not in ALPACA_FIELDS:
            raise DataError(
                f"--data_columns: '{key}' is not an Alpaca field; map instruction, input and output, e.g. "
                "--data_columns instruction=instruction,input=context,output=response"
            )
        if not column:
            raise DataError(f"--data_columns: no column given for '{key}'.")
        mapping[key] = column
    return mapping


def _columns_spec(mapping: Dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in mapping.items())


# ---------------------------------------------------------------------------------------------------
# Sources


@dataclass
class DataSource:
    """One training data set: where it is, what kind it is, which split and which columns to read.

    Build it with `open_source`. `batches()` yields checked Alpaca records; `key()` names the data.
    """

    path: str
    kind: str  # "json", "parquet", "csv", "disk" (a save_to_disk folder) or "hub"
    split: str = "train"
    columns: Dict[str, str] = field(default_factory=lambda: {k: k for k in ALPACA_FIELDS})
    flag: str = "--data_path"
    num_records: Optional[int] = None  # set by check()
    _dataset: Any = field(default=None, repr=False)
    _key: Optional[str] = field(default=None, repr=False)

    @property
    def mapped(self) -> bool:
        return any(k != v for k, v in self.columns.items())

    def describe(self) -> str:
        extra = [] if self.kind in ("json",) else [f"split {self.split}"] if self.kind in ("hub", "disk") else []
        if self.mapped:
            extra.append(f"columns {_columns_spec(self.columns)}")
        return self.path + (f" ({', '.join(extra)})" if extra else "")

    # -- reading ------------------------------------------------------------------------------------

    def batches(self, batch_size: int = BATCH_SIZE) -> Iterator[List[dict]]:
        """Checked records, `batch_size` at a time, each {"instruction", "output"} and maybe "input"."""
        records = self._json_records() if self.kind == "json" else self._table_records(batch_size)
        batch: List[dict] = []
        for record in records:
            batch.append(record)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def records(self) -> List[dict]:
        """All records in a list (for data that fits in memory: reports, conversions of small sets)."""
        return [r for batch in self.batches() for r in batch]

    def check(self) -> "DataSource":
        """Reads every record once, raising the first problem; sets `num_records`. Returns self."""
        n = 0
        for batch in self.batches():
            n += len(batch)
        if n == 0:
            raise DataError(f"{self.describe()}: holds no records.")
        self.num_records = n
        return self

    def _json_records(self) -> Iterator[dict]:
        cols = self.columns
        required = [cols["instruction"], cols["output"]]
        optional = [cols["input"]]
        if cols["input"] != "input":  # a column named in --data_columns must be there, as in a table
            required, optional = required + optional, []
        for record in iter_json_records(self.path, required, optional, self.flag):
            if not self.mapped:
                yield record
                continue
            out = {"instruction": record[cols["instruction"]], "output": record[cols["output"]]}
            if cols["input"] in record:
                out["input"] = record[cols["input"]]
            yield out

    def _table_batches(self, batch_size: int) -> Iterator[dict]:
        """The dataset's batches; a file the library cannot parse is a DataError naming it and the row reached."""
        rows = 0
        batches = iter(self.dataset().iter(batch_size=batch_size))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (ValueError, UnicodeDecodeError, OSError) as e:  # pandas/pyarrow parser errors are ValueErrors
                raise DataError(f"{self.describe()}: could not be read after row {rows} ({type(e).__name__}: {e}). "
                                "Check the file there, or re-save it (UTF-8, one header row).") from None
            rows += len(next(iter(batch.values()), []))
            yield batch

    def _table_records(self, batch_size: int) -> Iterator[dict]:
        dataset = self.dataset()
        cols = self.columns
        names = list(dataset.column_names) if dataset.column_names is not None else None
        index = 0
        for batch in self._table_batches(batch_size):
            if names is None:
                names = list(batch)
            self._check_columns(names)
            values = {k: batch[c] if c in batch else None for k, c in cols.items()}
            for j in range(len(values["instruction"])):
                record = {}
                for key in ALPACA_FIELDS:
                    if values[key] is None:
                        continue
                    value = values[key][j]
                    if value is None:
                        raise DataError(
                            f"{self.describe()}: row {index} has no value (null) in column '{cols[key]}' "
                            f"({key}). Fill it with text, or \"\" for none."
                        )
                    if not isinstance(value, str):
                        raise DataError(
                            f"{self.describe()}: row {index} column '{cols[key]}' ({key}) is a "
                            f"{type(value).__name__} ({value!r:.60}), expected a string. Convert the column to text."
                        )
                    record[key] = value
                yield record
                index += 1

    def _check_columns(self, names: Sequence[str]) -> None:
        missing = [f"'{c}' ({k})" for k, c in self.columns.items() if c not in names and (k != "input" or self.mapped and c != "input")]
        if missing:
            raise DataError(
                f"{self.describe()}: no column {', '.join(missing)}; the columns are {list(names)}. "
                "Map yours with --data_columns instruction=COLUMN,input=COLUMN,output=COLUMN."
            )

    def dataset(self):
        """The `datasets` object behind a table source (a Dataset, or an IterableDataset for files)."""
        if self._dataset is None:
            self._dataset = _load_table(self)
        return self._dataset

    # -- identity -----------------------------------------------------------------------------------

    def key(self) -> str:
        """A digest of the data's bytes, the split and the column mapping: changes whenever the records could.

        A file's name is not part of it (a renamed copy is the same data); a folder's file names are.
        Computed once per source.
        """
        if self._key is None:
            h = hashlib.sha256()
            h.update(f"kind={self.kind};split={self.split};columns={_columns_spec(self.columns)}\n".encode())
            files = self._files()
            for name in files:
                if len(files) > 1:
                    h.update(f"{os.path.basename(name)}\n".encode())
                with open(name, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            self._key = h.hexdigest()
        return self._key

    def _files(self) -> List[str]:
        if self.kind in ("json", "parquet", "csv"):
            return [self.path]
        if self.kind == "disk":
            root = Path(self.path)
            return [str(p) for p in sorted(root.rglob("*")) if p.is_file()]
        # hub: the Arrow files of the cached revision (their folder is named by the revision).
        return sorted(f["filename"] for f in self.dataset().cache_files)


def open_source(
    path: str | os.PathLike,
    split: str = "train",
    columns: Optional[str | Dict[str, str]] = None,
    flag: str = "--data_path",
) -> DataSource:
    """Resolves a `--data_path` to a `DataSource` (without reading the records yet).

    Args:
        path: a `.json`/`.jsonl` file (or any other text file of records), a `.parquet` or `.csv` file,
            a folder written by `datasets`' `save_to_disk`, or a Hugging Face hub dataset id.
        split: the split of a `save_to_disk` DatasetDict or a hub dataset.
        columns: `--data_columns`, mapping Alpaca's fields onto the source's names.
        flag: the command-line flag that named the data, for the messages.
    Raises:
        DataError: no such file, a folder that is not a saved dataset, a bad column mapping.
    """
    path = str(path)
    mapping = parse_columns(columns)
    p = Path(path)
    if p.is_file():
        kind = _TABULAR.get(p.suffix.lower(), "json")
    elif p.is_dir():
        if not any((p / n).exists() for n in ("state.json", "dataset_dict.json", "dataset_info.json")):
            raise DataError(
                f"{path}: a folder, but not one written by datasets' save_to_disk (no state.json or "
                f"dataset_dict.json in it). Pass {flag} a data file, a saved dataset folder or a hub dataset id."
            )
        kind = "disk"
    elif _HUB_ID.match(path) and p.suffix.lower() not in (".json", ".jsonl", ".parquet", ".csv"):
        kind = "hub"
    else:
        raise DataError(
            f"{path}: no such file. Pass {flag} an Alpaca JSON/JSONL, .parquet or .csv file, a save_to_disk "
            "folder, or a Hugging Face dataset id (owner/name)."
        )
    return DataSource(path, kind, split, mapping, flag)


def _load_table(source: DataSource):
    import datasets

    datasets.disable_progress_bars()
    path, kind = source.path, source.kind
    if kind in ("parquet", "csv"):
        # Streamed from the file itself: no converted copy is made, so none can go stale.
        extra = {}
        try:
            if kind == "csv":  # every cell stays the text it is ("" stays "", "12" stays "12")
                with open(path, newline="", encoding="utf-8-sig") as f:
                    header = next(csv.reader(f), [])
                extra = {"features": datasets.Features({c: datasets.Value("string") for c in header}),
                         "na_filter": False}
            return datasets.load_dataset(kind, data_files=path, split="train", streaming=True, **extra)
        except Exception as e:  # the library's own reading errors
            raise DataError(f"{path}: could not be read as {kind} ({type(e).__name__}: {e}). Re-save it as UTF-8 "
                            f"{kind}.") from None
    if kind == "disk":
        try:
            loaded = datasets.load_from_disk(path)
        except Exception as e:
            raise DataError(f"{path}: could not be loaded with datasets.load_from_disk ({type(e).__name__}: {e}).") from None
        if isinstance(loaded, datasets.DatasetDict):
            return _pick_split(loaded, source)
        return loaded
    return _load_hub(source)


def _pick_split(dataset_dict, source: DataSource):
    if source.split not in dataset_dict:
        raise DataError(
            f"{source.path}: no split '{source.split}'; it has {sorted(dataset_dict)}. Choose one with --data_split."
        )
    return dataset_dict[source.split]


def _load_hub(source: DataSource):
    import datasets
    from datasets import config as ds_config

    path = source.path
    try:
        return datasets.load_dataset(path, split=source.split)
    except ValueError as e:
        if "split" in str(e).lower() and source.split in str(e):
            raise DataError(f"{path}: {e} Choose another with --data_split.") from None
        raise
    except (ConnectionError, FileNotFoundError) as e:
        if ds_config.HF_HUB_OFFLINE:
            raise DataError(
                f"{path}: no such local file or folder, and the Hugging Face dataset '{path}' is not in the local "
                f"cache ({ds_config.HF_DATASETS_CACHE}) while offline (HF_HUB_OFFLINE=1). Fetch it once on a "
                f"machine with internet (python -c \"import datasets; datasets.load_dataset('{path}')\"), unset "
                "HF_HUB_OFFLINE, or pass a local file."
            ) from None
        raise DataError(
            f"{path}: no such local file or folder, and not a Hugging Face dataset that could be loaded "
            f"({type(e).__name__}: {e})."
        ) from None


# ---------------------------------------------------------------------------------------------------
# Conversion to Alpaca JSON


def word_count(record: dict) -> int:
    """Whitespace-separated words in the instruction, input and output together."""
    return sum(len(record.get(k, "").split()) for k in ALPACA_FIELDS)


def write_alpaca_json(source: DataSource, output_path: str | os.PathLike, max_words: int = 0) -> Dict[str, int]:
    """Writes `source`'s records as an Alpaca JSON list (atomically), as `json.dump(records, f, indent=4, ensure_ascii=False)` would.

    Args:
        source: any source (`open_source`), with its column mapping.
        output_path: the `.json` to write; it appears only once complete.
        max_words: leave out records of more than this many words (`word_count`); 0 keeps all.
    Returns:
        {"records": read, "written": written, "dropped_long": left out for their length}.
    """
    from alpaca_lib.core.fileio import atomic_write

    read = written = 0
    with atomic_write(output_path) as f:
        f.write("[")
        for batch in source.batches():
            for record in batch:
                read += 1
                if max_words and word_count(record) > max_words:
                    continue
                out = {k: record.get(k, "") for k in ALPACA_FIELDS}
                text = json.dumps(out, indent=4, ensure_ascii=False).replace("\n", "\n    ")
                f.write(("," if written else "") + "\n    " + text)
                written += 1
        if not written:
            raise DataError(
                f"{source.describe()}: no record left to write ({read} read, all longer than --max_words {max_words})."
                if read else f"{source.describe()}: holds no records."
            )
        f.write("\n]")
    return {"records": read, "written": written, "dropped_long": read - written}
