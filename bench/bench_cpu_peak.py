"""The demo's training against this CPU's own limit: matrix-product peak and training FLOP/s, per precision.

    .venv/bin/python bench/bench_cpu_peak.py               # about 3 minutes on 2 cores
    .venv/bin/python bench/bench_cpu_peak.py --steps 1     # the smallest run: about a minute

Measures, in one run on this machine:
- the peak: the best rate of large float32 matrix products (1024 and 2048 square, every core), and of bf16 ones
  where this CPU runs bf16 natively (`alpaca_lib.core.precision`);
- the demo's training (scripts/demo.sh's flags: SmolLM2-135M-Instruct, LoRA r=8, packed rows of up to 512 tokens)
  for `--warmup` + `--steps` steps in float32 and, where native, with bf16 autocast; each in a fresh process calling
  `train.train(argv)`. Its rate is the FLOPs of the timed steps over their wall time. The FLOPs are counted, not
  estimated: before training starts, the same batches go through forward and backward under torch's
  FlopCounterMode (matrix products and attention; the optimizer's elementwise work is left out).
The RESULT line gives both rates per precision and their ratio, with the machine they ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import REPO_ROOT, with_machine

CHILD_MARKER = "CHILD_FIGURES "
DEMO_FLAGS = [  # scripts/demo.sh's training flags, less the data, model, output and precision
    "--per_device_train_batch_size", "1", "--packing", "True", "--lora_r", "8", "--lora_alpha", "16",
    "--lora_dropout", "0.05", "--learning_rate", "2e-4", "--weight_decay", "0.", "--warmup_ratio", "0.03",
    "--lr_scheduler_type", "cosine", "--model_max_length", "512", "--report_to", "none", "--disable_tqdm", "True",
    "--seed", "42", "--save_strategy", "no", "--logging_steps", "1000",
]


def matmul_peak(dtype_name: str, seconds: float = 1.0) -> float:
    """The best GFLOP/s of square matrix products (1024 and 2048) in `dtype_name`, on every core."""
    import torch

    dtype = getattr(torch, dtype_name)
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def _child(argv_json: str, warmup: int) -> None:
    """Trains in this fresh process, counts the FLOPs of the timed steps, prints one JSON line."""
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    import train

    step_times: list = []
    flops: list = []

    class Meter(transformers.TrainerCallback):
        """Counts each step's FLOPs before training starts (the same batches, forward and backward, gradients then
        cleared), and times each step of the training itself."""

        def __init__(self, trainer):
            self.trainer = trainer

        def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
            for i, batch in enumerate(train_dataloader):
                if i == args.max_steps:
                    break
                with FlopCounterMode(display=False) as counter:
                    self.trainer.compute_loss(model, batch).backward()
                model.zero_grad(set_to_none=True)
                flops.append(counter.get_total_flops())

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.t0)

    original_init = transformers.Trainer.__init__

    def metered_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(Meter(self))

    transformers.Trainer.__init__ = metered_init
    trainer = train.train(json.loads(argv_json))
    timed = slice(warmup, len(step_times))
    print(CHILD_MARKER + json.dumps({
        "seconds": sum(step_times[timed]), "flops": sum(flops[timed]), "steps": len(step_times[timed]),
        "bf16": bool(trainer.args.bf16),
    }), flush=True)


def _train(model_dir: Path, data: Path, work: Path, bf16: bool, warmup: int, steps: int) -> dict:
    name = "bf16" if bf16 else "float32"
    argv = ["--model_name_or_path", str(model_dir), "--data_path", str(data), "--output_dir", str(work / name),
            "--max_steps", str(warmup + steps), "--bf16", str(bf16), "--preprocessing_cache_dir", str(work / "cache"),
            *DEMO_FLAGS]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(argv), "--warmup", str(warmup)],
                          capture_output=True, text=True, env=env, cwd=work)
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARKER)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {name} run failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(lines[-1][len(CHILD_MARKER):])


def _base_model(work: Path) -> Path:
    """The bundled SmolLM2-135M-Instruct as a model folder: the demo's, if it was made, else one made here."""
    from alpaca_lib import bundled

    demo = REPO_ROOT / "models" / "smollm2-135m-instruct"
    if bundled.is_complete(demo):
        return demo
    out = work / "smollm2-135m-instruct"
    subprocess.run([sys.executable, "-m", "alpaca_lib.bundled", "--output_dir", str(out)], check=True, cwd=REPO_ROOT)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per precision")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first is slow)")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.warmup)
        return
    from alpaca_lib.core.precision import decide

    native_bf16 = decide("bfloat16", "cpu")
    precisions = [False, True] if native_bf16.native else [False]
    figures = {"fp32_peak_gflops": f"{matmul_peak('float32'):.0f}"}
    if native_bf16.native:
        figures["bf16_peak_gflops"] = f"{matmul_peak('bfloat16'):.0f}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = _base_model(work)
        data = REPO_ROOT / "alpaca_data.json"
        for bf16 in precisions:
            r = _train(model, data, work, bf16, args.warmup, args.steps)
            name = "bf16" if bf16 else "fp32"
            rate = r["flops"] / r["seconds"] / 1e9
            peak = float(figures[f"{name}_peak_gflops"])
            print(f"{name}: {r['steps']} steps in {r['seconds']:.1f} s, {r['flops'] / r['steps'] / 1e12:.2f} TFLOP a "
                  f"step: {rate:.1f} GFLOP/s, {rate / peak:.2f} of this CPU's {name} matrix-product peak ({peak:.0f})")
            figures[f"{name}_train_gflops"] = f"{rate:.1f}"
            figures[f"{name}_of_peak"] = f"{rate / peak:.2f}"
            figures[f"{name}_step_s"] = f"{r['seconds'] / r['steps']:.2f}"
    if native_bf16.native:
        figures["bf16_train_speedup"] = f"{float(figures['fp32_step_s']) / float(figures['bf16_step_s']):.2f}"
    print(f"bf16 on this CPU: {'native' if native_bf16.native else 'emulated (not trained in)'} {native_bf16.evidence}")
    print(with_machine("RESULT " + " ".join(f"{k}={v}" for k, v in figures.items())))


if __name__ == "__main__":
    main()
