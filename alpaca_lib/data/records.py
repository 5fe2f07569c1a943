"""What an Alpaca record holds, and the one check every reader of records makes.

    from alpaca_lib.data.records import check_record
    check_record(record, "data.json: record 3", ["instruction", "input", "output"], optional=["input"])

A record is an object whose `instruction` and `output` (and, when present, `input`) are strings. Every reader
of such records (training data, the generator's seed tasks, regenerated and exported items) checks them with
`check_record`, in its own words (`RecordMessages`); a bad record raises `DataError` (a `UsageError`), or the
reader's own error type, with a message that says where the record is and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from alpaca_lib.core.errors import UsageError

ALPACA_FIELDS = ("instruction", "input", "output")
REQUIRED_KEYS = ("instruction", "output")
OPTIONAL_KEYS = ("input",)


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
