"""The one error type for a user's mistake, and how the entry points report it.

    raise UsageError(f"{path}: record {i} has keys {sorted(ex)}; expected 'instruction' and 'output'")

Library code raises `UsageError` (or a subclass that names the area: `DataError`, `FlagError`, ...) when
the input, a flag or a file is wrong, with a message that says what, where and how to fix it. The entry
points catch this type only and print `error: <message>` without a traceback; anything else is a bug and
keeps its traceback. It subclasses ValueError, so callers that expect ValueError still catch it.
"""

from __future__ import annotations

import sys


class UsageError(ValueError):
    """A mistake the user can fix (a flag, a path, a file's content); the message says how."""


def exit_with(error: BaseException, code: int = 1) -> None:
    """Prints `error: <message>` to stderr and exits with `code`."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(code)
