"""A typed config dataclass as a `fire` command: each flag, its default and its help written once, in the config.

    @dataclass
    class ScoreConfig:
        output_dir: str = flag("Where summary.json goes.")
        leaderboard: str = same_as(JudgeConfig, "leaderboard")

    score = cli_command(ScoreConfig, run_score, "score", "Recomputes summary.json from a judged run.")

`flag` declares a field with its help text, `same_as` reuses another config's field (default and help), and
`is_int` and `check_text` are the checks a field's `check()` uses for whole numbers and text. `cli_command` builds
the command (it builds the config and calls `run(config)`); `cli_signature` and `cli_docstring` are its two halves,
for a command that keeps a hand-written function. `run_fire` (alpaca_lib/core/cli.py) then runs it.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import field
from typing import Any, Callable

from alpaca_lib.core.errors import UsageError


def flag(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    """A dataclass field whose `--help` line is `text`; without `default` the flag is required.

    Args:
        text: the help text, one sentence or two.
        default: the default value (the only place it is written).
        **kw: passed on to `dataclasses.field` (e.g. `default_factory`).
    """
    return field(default=default, metadata={"help": text}, **kw)


def same_as(config_cls: type, name: str, text: str | None = None) -> Any:
    """A field with the default (and, unless `text` is given, the help) of `config_cls`'s field `name`.

    How a command reuses a setting defined elsewhere without typing its default again.
    """
    (f,) = [f for f in dataclasses.fields(config_cls) if f.name == name]
    return flag(f.metadata["help"] if text is None else text, f.default)


def is_int(value: Any) -> bool:
    """Whether `value` is a whole number as a flag gives it: an int, and not a bool (`--n` alone gives True)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_text(**values: Any) -> None:
    """Refuses a text flag whose value is not text (the command line gives text flags as typed, see
    `alpaca_lib.core.cli.verbatim_text`): a --config file's number or bool, or a flag given without a value.

    Raises:
        UsageError: naming the first such flag.
    """
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            raise UsageError(f"--{name} must be text, not the {type(value).__name__} {value!r}: give it as --{name} "
                             "TEXT (in a --config file, put the value in quotes).")


def cli_signature(config_cls: type, positional: bool = False) -> inspect.Signature:
    """A signature with the config's fields and defaults, for `fire` to build flags from.

    Args:
        config_cls: a dataclass whose fields are the flags.
        positional: the fields may also be given by position, in field order (keyword-only otherwise).
    """
    hints = typing.get_type_hints(config_cls)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if positional else inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter(f.name, kind, annotation=hints[f.name],
                          default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(config_cls)
    ]
    return inspect.Signature(params, return_annotation=None)


def cli_docstring(config_cls: type, summary: str) -> str:
    """`summary` and an Args section made of the fields' help texts, for `fire --help`."""
    lines = [summary, "", "Args:"]
    lines += [f"    {f.name}: {f.metadata['help']}" for f in dataclasses.fields(config_cls)]
    return "\n".join(lines)


def cli_command(config_cls: type, run: Callable[[Any], Any], name: str, summary: str, positional: bool = False) -> Callable:
    """A `fire` command whose flags are `config_cls`'s fields: it builds the config and calls `run(config)`.

    Args:
        config_cls: the command's settings, a dataclass (the only place its defaults live).
        run: what the command does, given the config.
        name: the command's name (what `fire` lists).
        summary: the first line of its help.
        positional: the flags may also be given by position, in field order.
    """
    signature = cli_signature(config_cls, positional)

    def command(*args: Any, **kwargs: Any) -> Any:
        return run(config_cls(**signature.bind(*args, **kwargs).arguments))

    command.__name__ = command.__qualname__ = name
    command.__signature__ = signature
    command.__doc__ = cli_docstring(config_cls, summary)
    return command
