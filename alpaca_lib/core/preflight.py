"""Checks that run before anything expensive: model sources, output folders, trackers, unknown flags.

    from alpaca_lib.core.preflight import check_model_source, check_output_dir
    check_model_source("./llama-7b", flag="--model_name_or_path")   # UsageError if it cannot be loaded
    check_output_dir("out/run1", flag="--output_dir")                # UsageError if it cannot be written

Each check raises `UsageError` with what is wrong, where, and how to fix it, and creates nothing, so a
mistake costs a second instead of a model load (minutes for a 7B model) or a place in a cluster queue.
"""

from __future__ import annotations

import difflib
import inspect
import re
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

from alpaca_lib.core.errors import UsageError

# Seconds to wait for the hub to answer one HEAD request: it answers in well under a second where there is a
# network, while transformers and datasets retry an unreachable hub for up to a minute before they fail.
HUB_PROBE_TIMEOUT_S = 3.0

# The pip package that provides each `--report_to` tracker transformers knows.
TRACKER_PACKAGES = {
    "azure_ml": "azureml-core", "comet_ml": "comet-ml", "mlflow": "mlflow", "neptune": "neptune",
    "tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "codecarbon": "codecarbon",
    "clearml": "clearml", "dagshub": "dagshub", "flyte": "flytekit", "dvclive": "dvclive", "swanlab": "swanlab",
    "kubeflow": "kubeflow-training",
}


def looks_like_local_path(name: str) -> bool:
    """Whether `name` can only mean a local path: a hub id is `name` or `owner/name`, never more."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name in (".", "..")
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
    )


def _offline() -> bool:
    # huggingface_hub is imported only here and below: it reads HF_HUB_DISABLE_PROGRESS_BARS when first imported,
    # and the entry points set that (alpaca_lib.core.quiet) after importing this module.
    from huggingface_hub.constants import is_offline_mode

    return is_offline_mode()


@lru_cache(maxsize=1)
def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> Optional[str]:
    """Why the Hugging Face hub (`huggingface_hub.constants.ENDPOINT`, which HF_ENDPOINT sets) cannot be reached,
    or None when it answers (any HTTP status). One HEAD request per process, through huggingface_hub's own
    session (its proxies and certificates), bounded by `timeout` even where a name lookup hangs."""
    from huggingface_hub.constants import ENDPOINT  # late, as in _offline
    from huggingface_hub.utils import get_session

    why: list[str] = []

    def head() -> None:
        try:
            get_session().head(ENDPOINT, timeout=timeout)
            why.append("")
        except Exception as e:  # any way of getting no answer: name lookup, refused, TLS, proxy, timeout
            why.append(f"{ENDPOINT}: {type(e).__name__}: {e}")

    probe = threading.Thread(target=head, name="hub-probe", daemon=True)
    probe.start()
    probe.join(timeout + 1.0)
    return (why[0] or None) if why else f"{ENDPOINT}: no answer in {timeout:g} s"


def check_model_source(name: str, gguf_file: Optional[str] = None, flag: str = "--model_name_or_path",
                       cache_dir: Optional[str] = None, config_name: str = "config.json", hub: bool = True) -> None:
    """Checks that a model named by a local folder or a hub id can be loaded, without loading it.

    Args:
        name: a local model folder, or a Hugging Face hub id (`owner/name`).
        gguf_file: a GGUF file inside that folder (or repo) to load instead of safetensors.
        flag: the flag that named it, for the message.
        cache_dir: the hub cache to look in (`--cache_dir`); None for the default.
        config_name: the file a loadable folder must hold when no GGUF file is named.
        hub: whether `name` may be a hub id; False for flags that take a local folder only.
    Raises:
        UsageError: a local folder that does not exist or is not a model folder, a file where a folder is
            expected, or a hub id with no cached copy while offline or with no network to the hub.
    """
    path = Path(name).expanduser()
    wanted = gguf_file or config_name
    if path.is_dir():
        if not (path / wanted).is_file():
            names = sorted(p.name for p in path.iterdir())
            present = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "") or "nothing"
            if gguf_file:
                raise UsageError(f"{flag} {name}: the folder has no GGUF file {gguf_file} (--gguf_file); it holds "
                                 f"{present}. Fix: pass --gguf_file with the name of a .gguf file in it.")
            raise UsageError(
                f"{flag} {name}: the folder holds no {config_name}, so it is not a Hugging Face model folder; it holds "
                f"{present}. Fix: pass a folder saved with save_pretrained (train.py's --output_dir, for one)."
            )
        return
    if path.exists():
        raise UsageError(f"{flag} {name}: this is a file, not a model folder. Pass the folder that holds it"
                         + (" and name the file with --gguf_file." if name.endswith(".gguf") else "."))
    if not hub:
        raise UsageError(f"{flag} {name}: no such folder ({path.resolve()}). Pass a saved model's folder "
                         "(train.py's --output_dir, for one).")
    if looks_like_local_path(name):
        raise UsageError(
            f"{flag} {name}: no such folder ({path.resolve()}). Check the path, or pass a Hugging Face hub id "
            "such as owner/model."
        )
    from huggingface_hub import try_to_load_from_cache  # late, as in _offline

    if isinstance(try_to_load_from_cache(name, wanted, cache_dir=cache_dir), str):
        return  # a cached copy loads with or without a network: no probe of the hub
    offline = _offline()
    unreachable = None if offline else hub_unreachable()
    if offline or unreachable:
        if offline:
            raise UsageError(
                f"{flag} {name}: not a local folder, and the Hugging Face hub is offline (HF_HUB_OFFLINE=1) with no "
                f"cached copy of {wanted}. Fix: download it where there is a network (`hf download {name}`) and "
                "pass that folder, or unset HF_HUB_OFFLINE."
            )
        raise UsageError(
            f"{flag} {name}: not a local folder, and no network to the Hugging Face hub ({unreachable}), with no "
            f"cached copy of {wanted}. Fix: download it first where there is a network (`hf download {name}`) and "
            "pass that folder; for a model already downloaded, set HF_HUB_OFFLINE=1."
        )


def check_output_dir(path: str, flag: str = "--output_dir") -> None:
    """Checks that `path` is, or can be created as, a writable folder; creates nothing."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path}: this is a file; pass a folder (it is created if it does not exist).")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, so no folder can be made under it.")
    try:  # a real write, since permission bits say nothing for root, read-only mounts or /proc
        tempfile.TemporaryDirectory(dir=existing, prefix=".write-check-").cleanup()
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write in {existing.resolve()} ({e.strerror}). "
                         "Pick a folder you can write to.") from None


def check_not_an_input(output: str, flag: str, inputs: Mapping[str, Optional[str]], replaces_folder: bool = False) -> None:
    """Refuses an output path that would overwrite one of the command's inputs.

    Args:
        output: the file or folder the command writes.
        flag: the flag that named it.
        inputs: flag -> path of each input (None for one not given).
        replaces_folder: the output folder is replaced whole (so an input inside it would go too).
    """
    out = Path(output).expanduser().resolve()
    for input_flag, input_path in inputs.items():
        if not input_path:
            continue
        source = Path(input_path).expanduser().resolve()
        if source == out or (replaces_folder and out in source.parents):
            where = "is" if source == out else "holds"
            raise UsageError(
                f"{flag} {output} {where} {input_flag} {input_path}: writing it would destroy an input. "
                f"Pick another {flag}."
            )


def check_output_file(path: str, flag: str, inputs: Optional[Mapping[str, Optional[str]]] = None) -> None:
    """Checks an output file: not a folder, in a folder that can be written, and none of `inputs`."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"{flag} {path}: this is a folder; pass the path of a file to write.")
    check_not_an_input(path, flag, inputs or {})
    check_output_dir(str(p.parent), flag=f"{flag} {path}: its folder")


def check_report_to(report_to: Iterable[str]) -> None:
    """Checks that every `--report_to` tracker is installed (transformers fails only once the model is loaded)."""
    from transformers.integrations import get_available_reporting_integrations  # transformers: only for train.py

    available = set(get_available_reporting_integrations())
    for name in report_to:
        if name in ("none", "all") or name in available:
            continue
        package = TRACKER_PACKAGES.get(name, name)
        raise UsageError(
            f"--report_to {name}: the {package} package is not installed. Fix: pip install {package} "
            "(in this environment), or pass --report_to none."
        )


def nearest(name: str, known: Iterable[str]) -> str:
    """` (did you mean --x?)` for the known flag closest to `name`, or '' when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_flags_error(unknown: Sequence[str], known: Iterable[str], command: str) -> UsageError:
    """The error for flags a command does not take, with the nearest known one for each."""
    known = list(known)
    named = "; ".join(f"{flag}{nearest(flag, known)}" for flag in unknown)
    return UsageError(f"{command}: unknown flag{'s' if len(unknown) > 1 else ''} {named}. See `{command} --help`.")


# A flag on a fire command line: fire takes -flag as well as --flag; "-5" is a value.
FLAG_TOKEN = re.compile(r"--?[A-Za-z_]")


def fire_command(args: Sequence[str], commands: Mapping[str, Callable] | Callable,
                 program: str) -> Optional[tuple[Callable, str, int]]:
    """What a fire command line runs: (the function, its name in messages, how many leading words name it: 1 for a
    {name: function} program, 0 for one function); None when the first word names no command (fire lists them)."""
    if not isinstance(commands, Mapping):
        return commands, program, 0
    if not args or args[0] not in commands:
        return None
    return commands[args[0]], f"{program} {args[0]}", 1


def check_fire_flags(argv: Sequence[str], commands: Mapping[str, Callable] | Callable, program: str) -> None:
    """Refuses flags that a fire command does not take, before the command runs.

    fire reports an unknown flag only after the command has run (or passes it into **kwargs); this check
    names the flag and the nearest known one first.

    Args:
        argv: the command line after the program name.
        commands: {name: function} for a multi-command program, or the one function.
        program: the program's name, for the message.
    """
    args = list(argv)
    if "--" in args:
        args = args[: args.index("--")]  # fire's own flags (--help, --trace) come after a lone --
    found = fire_command(args, commands, program)
    if found is None:
        return
    function, command, lead = found
    args = args[lead:]
    params = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = {f"--{name}" for name, p in params.items()
             if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
    if takes_any or "--help" in args or "-h" in args:
        return
    unknown = []
    for token in args:
        if not FLAG_TOKEN.match(token):
            continue
        flag = token.split("=", 1)[0]
        spelled = "--" + flag.lstrip("-").replace("-", "_")
        if spelled not in known and not (spelled.startswith("--no") and "--" + spelled[4:] in known):
            unknown.append(flag)
    if unknown:
        raise unknown_flags_error(unknown, sorted(known), command)
