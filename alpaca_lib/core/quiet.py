"""Third-party log lines that say nothing to a user of this project, stopped where they start.

    quiet_entry_point()          # at an entry point: both of the below
    quiet_deepspeed_probe()      # before transformers or accelerate import DeepSpeed (decided when they do)
    quiet_progress_bars()        # Hugging Face's own bars, off when stderr is a log rather than a terminal

Only messages that are wrong or meaningless here are touched; warnings that matter are left alone.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import threading

from alpaca_lib.core.progress import on_terminal


def quiet_entry_point() -> None:
    """What every command does first: `quiet_deepspeed_probe` and `quiet_progress_bars`."""
    quiet_deepspeed_probe()
    quiet_progress_bars()


def quiet_deepspeed_probe() -> None:
    """On a machine without a GPU, tells DeepSpeed (if installed) that it runs on CPU.

    Importing DeepSpeed probes for an accelerator and, finding none, warns "Setting accelerator to CPU. If
    you have GPU or other accelerator, we were unable to detect it." on every command, DeepSpeed used or
    not. `DS_ACCELERATOR=cpu` is the choice it would make itself, said in advance, so it stays silent. A
    value the user set, or a machine with CUDA, is left as it is.

    The decision needs torch, which takes a second to import, so it is made when DeepSpeed is first looked
    for (transformers and accelerate check whether it is installed, with torch imported by then) or
    imported, not here: a command that never loads a model, such as a judge on a server, never imports
    torch for it.
    """
    if "DS_ACCELERATOR" in os.environ or "deepspeed" in sys.modules:
        return
    if not any(isinstance(finder, _BeforeDeepSpeed) for finder in sys.meta_path):
        sys.meta_path.insert(0, _BeforeDeepSpeed())


def _set_cpu_accelerator_unless_a_device_is_there() -> None:
    import torch  # only for train.py's entry point; the other commands start without torch

    if "DS_ACCELERATOR" in os.environ or torch.cuda.is_available() or any(
            getattr(getattr(torch, name, None), "is_available", lambda: False)() for name in ("xpu", "npu", "mps")):
        return
    os.environ["DS_ACCELERATOR"] = "cpu"


class _BeforeDeepSpeed(importlib.abc.MetaPathFinder):
    """Runs `_set_cpu_accelerator_unless_a_device_is_there` once, the first time `deepspeed` is looked for;
    finds nothing itself, so the search goes on as usual. It stays in `sys.meta_path` (removing itself while
    importlib walks the list would skip the next finder), and a lock makes "once" hold across threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._done = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "deepspeed" and not self._done:
            with self._lock:
                if not self._done:
                    self._done = True  # first: importing torch below must not come back here
                    _set_cpu_accelerator_unless_a_device_is_there()
        return None


def quiet_progress_bars() -> None:
    """When stderr is not a terminal, turns off Hugging Face's own progress bars.

    transformers draws a bar for each model it loads or saves ("Loading weights", "Writing model shards");
    in a log file (nohup, a pipe, a scheduler) its carriage-return redraws become one long unreadable
    line per model, and the project's own progress lines (alpaca_lib.core.progress) already say how far a run
    is. `HF_HUB_DISABLE_PROGRESS_BARS`, which transformers and huggingface_hub read, is set unless the user
    set it; if transformers is already imported, its switch is turned off as well. On a terminal nothing
    changes.
    """
    if on_terminal():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging  # already imported: checked above

        hf_logging.disable_progress_bar()
