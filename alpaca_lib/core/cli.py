"""How the project's Fire command lines start, in one place, so that every command behaves the same.

    def main(argv=None):
        run_fire(COMMANDS, "eval_model.py", argv, quiet=True, errors=(GenerationError,))

A command line here: `--config FILE` reads flags from YAML (`alpaca_lib.core.config_file`), an unknown flag is
refused naming the nearest known one (`preflight.check_fire_flags`), a text flag's value reaches the command as
typed (`verbatim_text`), and a mistake to fix (`UsageError`, and the `errors` a command adds) ends in one
`error: ...` line and exit status 1 instead of a traceback.
"""

from __future__ import annotations

import inspect
import sys
import typing
from typing import Any, Callable, List, Mapping, Optional, Sequence, Set, Union

import fire

from alpaca_lib.core.config_file import expand_fire_config
from alpaca_lib.core.errors import UsageError, exit_with
from alpaca_lib.core.preflight import FLAG_TOKEN, check_fire_flags, fire_command
from alpaca_lib.core.quiet import quiet_entry_point

Commands = Union[Mapping[str, Callable], Callable]


def run_fire(commands: Commands, program: str, argv: Optional[Sequence[str]] = None, *, config_file: bool = True,
             quiet: bool = False, errors: tuple[type[BaseException], ...] = (),
             serialize: Optional[Callable[[Any], Any]] = None) -> None:
    """Runs `commands` (a {name: function} dict, or one function) with Fire on `argv` (default sys.argv[1:]).

    Args:
        commands: what Fire runs.
        program: the command's name in messages (`eval_model.py`, `python -m alpaca_lib.evaluation.infer`).
        argv: the arguments; None reads the command line.
        config_file: whether `--config FILE` is read (see alpaca_lib/core/config_file.py).
        quiet: start with `quiet.quiet_entry_point()` (commands that load models).
        errors: exception types shown as one `error:` line besides `UsageError`.
        serialize: Fire's `serialize` (e.g. `lambda _: None` for a command that prints its own summary).
    """
    if quiet:
        quiet_entry_point()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = verbatim_text(argv, commands)  # before --config adds its own (already quoted) values
        if config_file:
            argv = expand_fire_config(argv, commands, program)
        check_fire_flags(argv, commands, program)
        fire.Fire(commands, command=argv, serialize=serialize)
    except (UsageError, *errors) as e:
        exit_with(e)


TEXT_TYPES = (str, Optional[str], "str", "Optional[str]", "str | None")  # how a text flag is declared


def _text_flags(function: Callable) -> Set[str]:
    """The names of `function`'s parameters declared as text (`str` or `Optional[str]`)."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # a hint that does not resolve: the signature's own annotations then
        hints = {}
    return {name for name, p in inspect.signature(function).parameters.items()
            if hints.get(name, p.annotation) in TEXT_TYPES}


def verbatim_text(argv: Sequence[str], commands: Commands) -> List[str]:
    """`argv` with the value of each text flag written as a Python string literal, so that it reaches the command
    exactly as typed.

    fire reads every value as Python first: `--system_prompt Hi, there` became the tuple ('Hi', 'there'),
    `--input 3, 1, 2` the tuple (3, 1, 2) and `--instruction 42` a number. A flag given without a value
    (`--instruction` last, or before another flag) is left for the command to refuse.
    """
    args = list(argv)
    end = args.index("--") if "--" in args else len(args)  # fire's own flags come after a lone --
    found = fire_command(args, commands, "")
    if found is None:
        return args
    function, _, i = found
    text = _text_flags(function)
    while i < end:
        token = args[i]
        if FLAG_TOKEN.match(token):
            name, eq, value = token.partition("=")
            if name.lstrip("-").replace("-", "_") in text:
                if eq:
                    args[i] = f"{name}={value!r}"
                elif i + 1 < end and not FLAG_TOKEN.match(args[i + 1]):
                    args[i + 1] = repr(args[i + 1])
                    i += 1
        i += 1
    return args
