"""Flags from a YAML file: one file per run, with the command line overriding it.

    python train.py --config configs/alpaca_7b.yaml --model_name_or_path <hf_llama_dir> --output_dir <out>

A config file is a YAML mapping of flag names (without the leading --) to values, e.g.

    learning_rate: 2.0e-5
    fsdp: full_shard auto_wrap
    report_to: [none]

`expand_config` turns it into ordinary flags placed before the ones typed on the command line, so the
parser sees one command line and the flag given last (the typed one) wins, as with TRL's `--config`.
A key that is not a flag of the command stops the run, naming the file, the key and the nearest flag.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.preflight import fire_command, nearest

CONFIG_FLAG = "--config"


def config_path(argv: Sequence[str]) -> tuple[Optional[str], List[str]]:
    """Finds `--config PATH` (or `--config=PATH`) in `argv`.

    Returns:
        (PATH or None, argv without the --config flag).
    Raises:
        UsageError: --config without a path, or given twice.
    """
    rest, found = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        token = args[i]
        if token == CONFIG_FLAG:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise UsageError("--config needs the path of a YAML file, e.g. --config configs/alpaca_7b.yaml.")
            found.append(args[i + 1])
            i += 2
            continue
        if token.startswith(CONFIG_FLAG + "="):
            found.append(token.split("=", 1)[1])
        else:
            rest.append(token)
        i += 1
    if len(found) > 1:
        raise UsageError(f"--config given {len(found)} times ({', '.join(found)}); pass one file.")
    return (found[0] if found else None), rest


def _load_yaml(text: str, path: str) -> Any:
    """`yaml.safe_load(text)`, refusing what a file of flags never needs and what makes loading unbounded.

    An alias (`*name`) is refused: nested ones expand exponentially (nine levels of nine make 387 million
    values, minutes and gigabytes), and one may refer to itself. A key given twice in one mapping is refused
    (YAML would keep the last silently), and so is nesting deeper than Python's recursion allows.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise UsageError(f"--config {path}: line {event.start_mark.line + 1} uses the alias *{event.anchor}; "
                                 "a config file takes no aliases: write the value out.")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise UsageError(f"--config {path}: key {key!r} given twice (lines {seen[key]} and "
                                     f"{key_node.start_mark.line + 1}); keep one.")
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    loader = Loader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise UsageError(f"--config {path}: values nested too deeply to read; a config file holds flags and their "
                         "values.") from None
    finally:
        loader.dispose()


def read_config(path: str) -> dict:
    """The mapping in a YAML config file.

    Raises:
        UsageError: no such file (or a folder), invalid YAML, an alias, a key given twice, or a top level that is
            not a mapping of names to values.
    """
    import yaml  # only when a --config file is given

    file = Path(path)
    if file.is_dir():
        raise UsageError(f"--config {path}: a folder, not a file ({file.absolute()}); pass one YAML file in it "
                         "(--config FOLDER/run.yaml).")
    if not file.is_file():
        raise UsageError(f"--config {path}: no such file ({file.absolute()}).")
    try:
        data = _load_yaml(file.read_text(encoding="utf-8"), path)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" on line {where.line + 1}" if where is not None else ""
        raise UsageError(f"--config {path}: not valid YAML{line} ({getattr(e, 'problem', e)}).") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"--config {path}: not UTF-8 text (byte {e.start}); re-save it as UTF-8.") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise UsageError(f"--config {path}: expected a mapping of flag names to values (`learning_rate: 2.0e-5`), "
                         f"found a {type(data).__name__}.")
    return data


def _argparse_values(value: Any) -> List[str]:
    """The command-line words for one value, as HfArgumentParser reads them."""
    if isinstance(value, bool):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        return [w for v in value for w in _argparse_values(v)]
    if isinstance(value, dict):
        return [json.dumps(value)]
    return [str(value)]


def _fire_value(value: Any) -> str:
    """The text fire reads back as `value`: a string as a Python literal, or '123', 'True' and 'Hi, there' would
    reach the command as a number, a bool and a tuple."""
    return json.dumps(value) if isinstance(value, (list, dict)) else repr(value)


def config_flags(config: dict, known: Iterable[str], path: str, program: str, style: str = "argparse") -> List[str]:
    """The flags that `config` stands for.

    Args:
        config: the file's mapping (a `None` value leaves the flag at its default).
        known: the command's flags, with the leading -- (`--learning_rate`).
        path: the file, for the messages.
        program: the command, for the messages (`train.py`, `eval_model.py outputs`).
        style: "argparse" (`--name value ...`) or "fire" (`--name=value`).
    Raises:
        UsageError: a key that is not one of `known`, naming the nearest.
    """
    known = sorted(known)
    unknown = [k for k in config if f"--{k.replace('-', '_')}" not in known]
    if unknown:
        named = "; ".join(f"'{k}'{nearest('--' + k, known).replace('--', '')}" for k in unknown)
        raise UsageError(f"--config {path}: unknown key{'s' if len(unknown) > 1 else ''} {named}; the keys are "
                         f"{program}'s flags without the leading -- (see `{program} --help`).")
    flags: List[str] = []
    for key, value in config.items():
        if value is None:
            continue
        name = "--" + key.replace("-", "_")
        if style == "fire":
            flags.append(f"{name}={_fire_value(value)}")
        else:
            flags += [name, *_argparse_values(value)]
    return flags


def expand_config(argv: Sequence[str], known: Iterable[str], program: str, style: str = "argparse",
                  keep_leading: int = 0) -> List[str]:
    """`argv` with `--config FILE` replaced by the file's flags, placed before the typed ones (which win).

    Args:
        argv: the command line after the program name.
        known: the command's flags, with the leading --.
        program: the command, for the messages.
        style: "argparse" or "fire" (see `config_flags`).
        keep_leading: words to keep in front (a fire command's name: `outputs`).
    Returns:
        The command line to parse; `argv` itself when there is no --config.
    """
    path, rest = config_path(argv)
    if path is None:
        return list(argv)
    flags = config_flags(read_config(path), known, path, program, style)
    return rest[:keep_leading] + flags + rest[keep_leading:]


def expand_fire_config(argv: Sequence[str], commands, program: str) -> List[str]:
    """`expand_config` for a fire program: {name: function} (the command comes first in argv) or one function."""
    args = list(argv)
    found = fire_command(args, commands, program)
    if found is None:
        return args
    function, name, lead = found
    known = [f"--{p}" for p in inspect.signature(function).parameters]
    return expand_config(args, known, name, style="fire", keep_leading=lead)
