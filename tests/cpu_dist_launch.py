"""Runs a script under torchrun on CPU with accelerate allowed to use FSDP2 and DeepSpeed there.

    torchrun --nproc_per_node=2 tests/cpu_dist_launch.py train.py --fsdp "full_shard auto_wrap" ...

Test-only. accelerate sets up FSDP and DeepSpeed only for accelerator process groups; on a CPU-only
machine it silently falls back to plain DDP (FSDP) or a single process (DeepSpeed). Both libraries work
over gloo on CPU, so these two patches let the tests exercise the project's real FSDP and DeepSpeed
wiring (flags, configs, saving) without a GPU. The product (train.py) runs unpatched.
"""

from __future__ import annotations

import os
import runpy
import sys

from accelerate import state as accel_state
from accelerate.utils import DistributedType


def _allow_fsdp_on_cpu() -> None:
    original_init = accel_state.AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            self.distributed_type = DistributedType.FSDP
            # Both states must agree, or save_model reads freed storage while gathering.
            accel_state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    accel_state.AcceleratorState.__init__ = init


def _allow_deepspeed_on_cpu() -> None:
    original = accel_state.PartialState._prepare_backend

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        backend_name, distributed_type = original(self, cpu, sagemaker_dp, backend)
        if (
            distributed_type == DistributedType.NO
            and int(os.environ.get("WORLD_SIZE", "1")) > 1
            and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        ):
            return "gloo", DistributedType.MULTI_CPU
        return backend_name, distributed_type

    accel_state.PartialState._prepare_backend = prepare_backend


def run_as_main(before=None) -> None:
    """Runs the script named in argv[1] (with the rest as its argv) with FSDP and DeepSpeed let run on CPU.

    Args:
        before: called after sys.path is set up for the script, just before it runs.
    """
    _allow_fsdp_on_cpu()
    _allow_deepspeed_on_cpu()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    # As `python train.py` does: the script's own folder first on sys.path (not tests/), so that it imports
    # the alpaca_lib next to it, not whichever one the environment has installed.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    if before is not None:
        before()
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    run_as_main()
