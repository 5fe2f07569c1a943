"""Records from a JSON list or JSON Lines file, read a chunk at a time and checked as they come.

    from alpaca_lib.data.json_reader import iter_json_records, iter_json_values, load_records
    records = load_records("alpaca_data.json")               # all of them, in a list
    for record in iter_json_records("big.jsonl"):            # or one at a time, in bounded memory
        ...
    for where, value in iter_json_values("chat.jsonl"):      # unchecked, with "chat.jsonl: record 3 (line 4)"
        ...

Files are read as editors save them (UTF-8 with or without a BOM, UTF-16 or UTF-32 with a BOM), and the
format is chosen by content, not by extension. Invalid text or JSON and bad records raise `DataError`
naming the file, the record index, line and column (or byte offset), and the fix.
"""

from __future__ import annotations

import codecs
import json
import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from alpaca_lib.data.records import OPTIONAL_KEYS, REQUIRED_KEYS, DataError, check_record

_READ_CHUNK = 1 << 20  # bytes read at a time from a JSON file
_BOMS = (  # longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)


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


def iter_json_values(path: str | os.PathLike, flag: str = "--data_path") -> Iterator[Tuple[str, Any]]:
    """Each value of a JSON list or JSON Lines file (chosen by content) with where it is, unchecked.

    Yields:
        (where, value): where is "PATH: record N" in a list, "PATH: record N (line L)" in JSON Lines; it opens
        the messages of whatever check the caller makes of the value.
    Raises:
        DataError: a file that cannot be read, is not text, is empty, or holds invalid JSON.
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
            yield f"{path}: record {n - 1}", record
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
        yield f"{path}: record {index} (line {lineno})", record
        index += 1


def iter_json_records(
    path: str | os.PathLike,
    required: Sequence[str] = REQUIRED_KEYS,
    optional: Sequence[str] = OPTIONAL_KEYS,
    flag: str = "--data_path",
) -> Iterator[dict]:
    """Checked Alpaca-style records of a JSON list or JSON Lines file (chosen by content), one at a time.

    Training data, which may also hold conversations, is read by `alpaca_lib.data.sources.DataSource`.

    Raises:
        DataError: naming the file, the record index or line (or byte offset), and the problem.
    """
    for where, record in iter_json_values(path, flag):
        yield check_record(record, where, [*required, *optional], optional)


def _lines(chunks: Iterator[str], first: str) -> Iterator[str]:
    buf = first
    for chunk in chunks:
        buf += chunk
        *complete, buf = buf.split("\n")
        yield from complete
    yield from buf.split("\n")


def load_records(
    path: str | os.PathLike,
    required: Sequence[str] = REQUIRED_KEYS,
    optional: Sequence[str] = OPTIONAL_KEYS,
    flag: str = "--data_path",
) -> List[dict]:
    """Reads and checks an Alpaca training file: a JSON list of records, or JSON Lines.

    The file may be UTF-8 (with or without a BOM), or UTF-16 or UTF-32 with a BOM, as editors save it.
    Other sources (parquet, CSV, saved datasets, hub ids) are read with `alpaca_lib.data.sources.open_source`.

    Args:
        path: `.json` holding a list of {"instruction", "input", "output"} objects, or JSON Lines
            (one object per line; chosen by content, not by extension).
        required, optional: the string fields each record must have, and those it may have (other keys
            are kept as they are). The defaults are a training file's.
        flag: the command-line flag that named the file, for the messages.
    Returns:
        The records, each with the required fields (and any optional one) as strings.
    Raises:
        DataError: naming the file, the record index or line (or byte offset), and the problem.
    """
    records = list(iter_json_records(path, required, optional, flag))
    if not records:
        raise DataError(f"{path}: the file holds no records.")
    return records
