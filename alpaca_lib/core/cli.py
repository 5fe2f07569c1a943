"""How the project's Fire command lines start, in one place, so that every command behaves the same.

    def main(argv=None):
        run_fire(COMMANDS, "eval_model.py", argv, quiet=True, errors=(GenerationError,))

A command line here: `--config FILE` reads flags from YAML (`alpaca_lib.core.config_file`), an unknown flag is
refused naming the nearest known one (`preflight.check_fire_flags`), and a mistake to fix (`UsageError`, and
the `errors` a command adds) ends in one `error: ...` line and exit status 1 instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import fire

from alpaca_lib.core.config_file import expand_fire_config
from alpaca_lib.core.errors import UsageError, exit_with
from alpaca_lib.core.preflight import check_fire_flags
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
        if config_file:
            argv = expand_fire_config(argv, commands, program)
        check_fire_flags(argv, commands, program)
        fire.Fire(commands, command=argv, serialize=serialize)
    except (UsageError, *errors) as e:
        exit_with(e)
