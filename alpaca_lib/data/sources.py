"""Where training records come from: Alpaca JSON/JSONL, parquet, CSV, a `save_to_disk` folder or a hub id.

    from alpaca_lib.data.sources import open_source
    source = open_source("databricks/databricks-dolly-15k", columns="input=context,output=response").check()
    for batch in source.batches():        # lists of {"instruction", "input", "output"} records, checked
        ...

`open_source` resolves a `--data_path` to a `DataSource`: which kind of data it is, the split, and the column
mapping (`--data_columns`). JSON and JSON Lines are read by `alpaca_lib.data.json_reader`, everything else
through the `datasets` library (`alpaca_lib.data.tables`), a batch at a time, so memory stays bounded by the
batch size whatever the size of the data. `DataSource.key()` names the data exactly (the bytes of its files,
which for a `save_to_disk` folder include the dataset's fingerprint and for a hub dataset sit under its
revision), so a preprocessing cache keyed on it is never served stale.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from alpaca_lib.data.json_reader import iter_json_records
from alpaca_lib.data.records import ALPACA_FIELDS, DataError
from alpaca_lib.data.tables import load_table

BATCH_SIZE = 4096  # records per batch: large enough for batched tokenizing, small enough for any RAM
_TABULAR = {".parquet": "parquet", ".csv": "csv"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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
        missing = [f"'{c}' ({k})" for k, c in self.columns.items()
                   if c not in names and (k != "input" or self.mapped and c != "input")]
        if missing:
            raise DataError(
                f"{self.describe()}: no column {', '.join(missing)}; the columns are {list(names)}. "
                "Map yours with --data_columns instruction=COLUMN,input=COLUMN,output=COLUMN."
            )

    def dataset(self):
        """The `datasets` object behind a table source (a Dataset, or an IterableDataset for files)."""
        if self._dataset is None:
            self._dataset = load_table(self.path, self.kind, self.split)
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


def _not_readable(path: str, flag: str) -> str:
    """Why `path`, which exists, is neither a data file nor a folder, and what to pass instead."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return (f"{path}: a symlink loop (following its links leads back to {path}); point {flag} at the data "
                    "file itself.")
        if e.errno == errno.ENOENT:
            return (f"{path}: a symlink to {os.readlink(path)}, which does not exist; pass {flag} the data file "
                    "itself.")
        return f"{path}: cannot be read ({e.strerror}); pass {flag} a data file you can read."
    if not stat.S_ISFIFO(mode):
        return f"{path}: not a regular file (a device or a socket); pass {flag} a data file."
    return (f"{path}: a pipe (a FIFO, or a shell's <(...)), which can be read only once, and the data is read more "
            f"than once (its digest, then its records); write it to a file first (e.g. `cmd > data.json`) and pass "
            f"{flag} data.json.")


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
    elif os.path.lexists(path):  # there, but neither a file nor a folder: a symlink loop, a dangling link, a pipe
        raise DataError(_not_readable(path, flag))
    elif _HUB_ID.match(path) and p.suffix.lower() not in (".json", ".jsonl", ".parquet", ".csv"):
        kind = "hub"
    else:
        raise DataError(
            f"{path}: no such file. Pass {flag} an Alpaca JSON/JSONL, .parquet or .csv file, a save_to_disk "
            "folder, or a Hugging Face dataset id (owner/name)."
        )
    return DataSource(path, kind, split, mapping, flag)
