"""Where training records come from: JSON/JSONL, parquet, CSV, a `save_to_disk` folder or a hub id.

    from alpaca_lib.data.sources import open_source
    source = open_source("databricks/databricks-dolly-15k", columns="input=context,output=response").check()
    for batch in source.batches():        # lists of checked records: Alpaca's, or {"messages": [...]}
        ...
    source.check_format(prompt_format)    # conversations need --prompt_template chat: refused otherwise

`open_source` resolves a `--data_path` to a `DataSource`: which kind of data it is, the split, and the column
mapping (`--data_columns`). JSON and JSON Lines are read by `alpaca_lib.data.json_reader`, everything else
through the `datasets` library (`alpaca_lib.data.tables`), a batch at a time, so memory stays bounded by the
batch size whatever the size of the data. A record is an Alpaca record ({"instruction", "output"} and maybe
"input") or a conversation (`messages` or ShareGPT's `conversations`, or the column `--data_columns
messages=COLUMN` names; a list of structs in a table), checked by `alpaca_lib.data.conversations` and handed
on in OpenAI's form, {"messages": [{"role", "content"}, ...]}; one data set may hold both. `DataSource.key()`
names the data exactly (the bytes of its files, which for a `save_to_disk` folder include the dataset's
fingerprint and for a hub dataset sit under its revision), so a preprocessing cache keyed on it is never
served stale.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from alpaca_lib.data.conversations import CONVERSATION_KEYS, check_conversation
from alpaca_lib.data.json_reader import iter_json_values
from alpaca_lib.data.records import ALPACA_FIELDS, DataError, check_record
from alpaca_lib.data.tables import load_table

if TYPE_CHECKING:
    from alpaca_lib.data.formats import PromptFormat

BATCH_SIZE = 4096  # records per batch: large enough for batched tokenizing, small enough for any RAM
_TABULAR = {".parquet": "parquet", ".csv": "csv"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
MESSAGES = "messages"  # --data_columns messages=COLUMN: the column that holds each record's conversation


# ---------------------------------------------------------------------------------------------------
# Column mapping


def parse_columns(spec: Optional[str | Dict[str, str]]) -> Dict[str, str]:
    """`instruction=instruction,input=context,output=response` -> {alpaca field: source column}.

    Fields not named keep their own name. An empty spec maps each field to itself. `messages=COLUMN` names
    the column that holds conversations (by default `messages` or `conversations`); it is in the mapping
    only when it names another column.
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
        if key not in ALPACA_FIELDS and key != MESSAGES:
            raise DataError(
                f"--data_columns: '{key}' is not an Alpaca field; map instruction, input and output, e.g. "
                "--data_columns instruction=instruction,input=context,output=response (or name the column of "
                "conversations: messages=COLUMN)"
            )
        if not column:
            raise DataError(f"--data_columns: no column given for '{key}'.")
        if key != MESSAGES or column not in CONVERSATION_KEYS:
            mapping[key] = column
    return mapping


def _columns_spec(mapping: Dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in mapping.items())


# ---------------------------------------------------------------------------------------------------
# Sources


@dataclass
class DataSource:
    """One training data set: where it is, what kind it is, which split and which columns to read.

    Build it with `open_source`. `batches()` yields checked records (Alpaca's, or conversations as
    {"messages": [...]}); `check()` reads them all once and counts the conversations; `key()` names the data.
    """

    path: str
    kind: str  # "json", "parquet", "csv", "disk" (a save_to_disk folder) or "hub"
    split: str = "train"
    columns: Dict[str, str] = field(default_factory=lambda: {k: k for k in ALPACA_FIELDS})
    flag: str = "--data_path"
    num_records: Optional[int] = None  # set by check() and records()
    num_conversations: Optional[int] = None  # how many of them are conversations; set with num_records
    first_conversation: Optional[str] = None  # where the first one is, e.g. "data.jsonl: record 3 (line 4)"
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
        """Checked records, `batch_size` at a time: Alpaca records ({"instruction", "output"} and maybe
        "input") and conversations ({"messages": [{"role", "content"}, ...]}), in the data's order."""
        batch: List[dict] = []
        for _, record in self._entries(batch_size):
            batch.append(record)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def records(self) -> List[dict]:
        """All records in a list (for data that fits in memory: reports, conversions of small sets); sets the
        counts `check()` sets."""
        return list(self._counted(self._entries(BATCH_SIZE)))

    def check(self) -> "DataSource":
        """Reads every record once, raising the first problem; sets `num_records`, `num_conversations` and
        `first_conversation`. Returns self."""
        for _ in self._counted(self._entries(BATCH_SIZE)):
            pass
        if self.num_records == 0:
            raise DataError(f"{self.describe()}: holds no records.")
        return self

    def check_format(self, prompt_format: "PromptFormat", flag: str = "--prompt_template") -> None:
        """Refuses conversations unless the prompt format is chat (Alpaca's templates and template files have no
        turns); reads the data first if `check()` has not.

        Raises:
            DataError: naming the first conversation, how many there are, and the fix.
        """
        if self.num_conversations is None:
            self.check()
        if self.num_conversations and not prompt_format.is_chat:
            raise DataError(
                f"{self.first_conversation} is a conversation ({self.num_conversations} of {self.num_records} "
                f"records are), and {flag} {prompt_format.name} trains on Alpaca records (instruction, input, "
                f"output) only. Train on conversations with {flag} chat (the model's own chat template).")

    def _counted(self, entries: Iterator[Tuple[str, dict]]) -> Iterator[dict]:
        n = conversations = 0
        first = None
        for where, record in entries:
            n += 1
            if MESSAGES in record:  # checked records: only a conversation has this key
                conversations += 1
                first = first or where
            yield record
        self.num_records, self.num_conversations, self.first_conversation = n, conversations, first

    def _entries(self, batch_size: int) -> Iterator[Tuple[str, dict]]:
        """(where, checked record) for each record, in order."""
        return self._json_entries() if self.kind == "json" else self._table_entries(batch_size)

    def _json_entries(self) -> Iterator[Tuple[str, dict]]:
        cols = self.columns
        column = cols.get(MESSAGES)
        keys = (column,) if column else CONVERSATION_KEYS
        stray = {*CONVERSATION_KEYS, *keys}  # null ones, in an Alpaca record: left out of it
        required = [cols["instruction"], cols["output"]]
        optional = [cols["input"]]
        if cols["input"] != "input":  # a column named in --data_columns must be there, as in a table
            required, optional = required + optional, []
        remap = any(cols[k] != k for k in ALPACA_FIELDS)
        for where, record in iter_json_values(self.path, self.flag):
            maybe = isinstance(record, dict) and not stray.isdisjoint(record)  # rare in Alpaca data: quick to rule out
            # A record with an instruction is an Alpaca record, whatever else it holds (as it always was).
            if maybe and cols["instruction"] not in record and any(record.get(k) is not None for k in keys):
                yield where, check_conversation(record, where, column)
                continue
            try:
                check_record(record, where, [*required, *optional], optional)
            except DataError as e:
                raise DataError(f"{e}{_conversation_hint(record, column)}") from None
            if remap:
                out = {"instruction": record[cols["instruction"]], "output": record[cols["output"]]}
                if cols["input"] in record:
                    out["input"] = record[cols["input"]]
                yield where, out
            elif maybe:
                yield where, {k: v for k, v in record.items() if k not in stray}
            else:
                yield where, record

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

    def _table_entries(self, batch_size: int) -> Iterator[Tuple[str, dict]]:
        dataset = self.dataset()
        names = list(dataset.column_names) if dataset.column_names is not None else None
        index, described = 0, self.describe()
        for batch in self._table_batches(batch_size):
            if names is None:
                names = list(batch)
            turns = self._conversation_columns(names)
            self._check_columns(names, bool(turns))
            values = {k: batch.get(self.columns[k]) for k in ALPACA_FIELDS}
            for j in range(len(next(iter(batch.values()), []))):
                where = f"{described}: row {index}"
                present = {c: _as_turns(batch[c][j]) for c in turns if batch[c][j] is not None}
                if present and (values["instruction"] is None or values["instruction"][j] is None):
                    yield where, check_conversation(present, where, self.columns.get(MESSAGES))
                else:
                    yield where, self._alpaca_row(values, j, where, turns)
                index += 1

    def _alpaca_row(self, values: Dict[str, Optional[list]], j: int, where: str, turns: Sequence[str]) -> dict:
        cols = self.columns
        record = {}
        for key in ALPACA_FIELDS:
            if values[key] is None:  # no such column: only an absent input, or a table of conversations
                if key != "input":
                    raise DataError(
                        f"{where} has no value (null) in column {' or '.join(repr(c) for c in turns)}, and there is "
                        f"no column '{cols[key]}' ({key}) for an Alpaca record. Fill in its conversation, or leave "
                        "the row out.")
                continue
            value = values[key][j]
            if value is None:
                either = f" (nor a conversation in {' or '.join(repr(c) for c in turns)})" if turns else ""
                raise DataError(
                    f"{where} has no value (null) in column '{cols[key]}' ({key}){either}. Fill it with text, or "
                    "\"\" for none."
                )
            if not isinstance(value, str):
                raise DataError(
                    f"{where} column '{cols[key]}' ({key}) is a {type(value).__name__} ({value!r:.60}), expected a "
                    "string. Convert the column to text."
                )
            record[key] = value
        return record

    def _conversation_columns(self, names: Sequence[str]) -> List[str]:
        """The columns of `names` that hold conversations (refused in a CSV file, whose cells are text)."""
        column = self.columns.get(MESSAGES)
        found = ([column] if column in names else []) if column else [c for c in CONVERSATION_KEYS if c in names]
        if found and self.kind == "csv" and self.columns["instruction"] in names:
            return []  # an Alpaca table with a stray column of that name: read as it always was
        if found and self.kind == "csv":
            raise DataError(
                f"{self.describe()}: column '{found[0]}' would hold conversations, but a CSV cell holds only text "
                "and a conversation is a list of turns. Write conversations as JSON Lines (one {\"messages\": "
                "[{\"role\": ..., \"content\": ...}, ...]} per line) or parquet.")
        return found

    def _check_columns(self, names: Sequence[str], conversations: bool = False) -> None:
        # With a column of conversations (or one named), Alpaca's own columns may be absent: every row is then one.
        conversations = conversations or MESSAGES in self.columns
        missing = [f"'{c}' ({k})" for k, c in self.columns.items()
                   if c not in names and (k != "input" or self.mapped and c != "input")
                   and not (conversations and k == c)]
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


def _as_turns(value: Any) -> Any:
    """A table's list of turns: a list of {"role", "content"} dicts, also when stored column-wise as a dict of
    lists (older `datasets` Sequence features)."""
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        if len(lengths) == 1:
            return [dict(zip(value, row)) for row in zip(*value.values())]
    return value


def _conversation_hint(record: Any, column: Optional[str]) -> str:
    """For an object with none of Alpaca's fields: the key that may hold conversations under another name."""
    if column or not isinstance(record, dict) or any(k in record for k in ALPACA_FIELDS):
        return ""
    for key, value in record.items():
        if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
            return (f" If '{key}' holds conversations (lists of turns), name it: --data_columns "
                    f"{MESSAGES}={key}.")
    return ""


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
        columns: `--data_columns`, mapping Alpaca's fields (and `messages`, the column of conversations) onto
            the source's names.
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
