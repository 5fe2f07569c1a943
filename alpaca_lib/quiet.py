"""Third-party log lines that say nothing to a user of this project, stopped where they start.

    quiet_deepspeed_probe()      # at an entry point, before transformers or accelerate import DeepSpeed

Only messages that are wrong or meaningless here are touched; warnings that matter are left alone.
"""

from __future__ import annotations

import os
import sys


def quiet_deepspeed_probe() -> None:
    """On a machine without a GPU, tells DeepSpeed (if installed) that it runs on CPU.

    Importing DeepSpeed probes for an accelerator and, finding none, warns "Setting accelerator to CPU. If
    you have GPU or other accelerator, we were unable to detect it." on every command, DeepSpeed used or
    not. `DS_ACCELERATOR=cpu` is the choice it would make itself, said in advance, so it stays silent. A
    value the user set, or a machine with CUDA, is left as it is.
    """
    if "DS_ACCELERATOR" in os.environ or "deepspeed" in sys.modules:
        return
    import torch

    if torch.cuda.is_available() or any(
            getattr(getattr(torch, name, None), "is_available", lambda: False)() for name in ("xpu", "npu", "mps")):
        return
    os.environ["DS_ACCELERATOR"] = "cpu"
