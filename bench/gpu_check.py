"""The GPU check behind bench/gpu_check.sh: train.py's modes on a ~1B LLaMA, timed, then batched generation.

    bash bench/gpu_check.sh              # on one GPU (H200: 5 minutes, estimated); figures in $OUT/gpu_check.json
    bash bench/gpu_check.sh --dry-run    # the same steps on CPU with a tiny model, in about a minute

Run it through gpu_check.sh, which checks the prerequisites first. The model is built here from a config
(random weights: speed does not depend on them): LLaMA-7B's layer shape (hidden 4096, MLP 11008, 32 heads)
with 4 layers, and a LLaMA-style BPE tokenizer trained on the bundled alpaca_data.json (`alpaca_testkit.tiny`),
about 0.9B parameters. The data is 52,002 Alpaca records (the size of the 52K release) synthesized from
the bundled alpaca_data.json (`benchutil.synthesize_records`). Each mode is `train.train(argv)` in its own
process, `--bf16 auto --tf32 True` (bf16 on the GPU; float32 on a CPU that emulates bf16), `--model_max_length 512`:

- faithful: the original recipe's random padded batches (`--per_device_train_batch_size 64`);
- group_by_length: the same batches of similar length (`--group_by_length True`);
- packed: `--packing True`, 16 rows of up to 512 tokens per step (about as many examples as 64 padded ones),
  with the attention train.py chooses for a user on this machine (`--packed_attention auto`: torch's
  variable-length flash-attention when its probe passes;
  `alpaca_lib.training.packed_attention.choose_packed_attention`); the figures carry train.py's log line of
  the choice and how many attention calls ran each kernel;
- packed_sdpa: the same rows with `--packed_attention sdpa` (sdpa over a block-diagonal mask), for comparison;
- lora: faithful batches with `--lora_r 16 --lora_alpha 32 --lora_target_modules all-linear`;
- gradient_checkpointing: faithful batches with `--gradient_checkpointing True`;
- fsdp: `torchrun --nproc_per_node 1 ... --fsdp "full_shard auto_wrap"` on faithful batches; it saves the
  final model, which is reloaded and compared tensor by tensor with the trained weights.

Timing: a fixed number of optimizer steps (`--max_steps`), of which the first `--warmup_steps` are left
out; the clock reads after `torch.cuda.synchronize()` at the end of the last warm-up step and of the last
step. Tokens are counted from the batches of the timed steps: `tokens` are the real (non-padding) tokens,
`computed_tokens` include the padding, `loss_tokens` are those whose next token is in the loss.
MFU = 6 x params x tokens / seconds / peak FLOP/s, with params all weights but the input embedding (a
lookup, not a matrix product) and the peak the datasheet's dense bf16 rate (`--peak_tflops`, default
989.4 for an H100/H200 SXM); the JSON also gives it against a bf16 matrix product measured here. It counts
no attention FLOPs, the recomputation of gradient checkpointing as none, and the frozen weights of LoRA
as if they took gradients, so it is the same yardstick across modes, not each mode's hardware work.
Then generation: the FSDP run's saved model answers prompts one at a time and in batches
(`alpaca_lib.evaluation.outputs.LocalModel`, what `eval_model.py outputs` runs), and `eval_model.py outputs` itself
runs once on them.

With --dry-run everything runs on CPU with a tiny LLaMA for a few steps per mode, and the FSDP run goes
through tests/cpu_dist_launch.py (accelerate allowed to run FSDP2 over gloo), so each step of the GPU run
is rehearsed; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import REPO_ROOT, bundled_records, peak_rss_mb, synthesize_records, with_machine

CHILD_MARKER = "CHILD_FIGURES "
H100_H200_BF16_TFLOPS = 989.4  # dense bf16, SXM datasheet

# What differs between the GPU run and its CPU rehearsal.
GPU = dict(hidden=4096, intermediate=11008, layers=4, heads=32, vocab=32000, examples=52002, max_length=512,
           batch=64, rows=16, warmup=3, steps=20, gen_n=32, gen_batch=16, gen_tokens=64, workers=2)
DRY = dict(hidden=64, intermediate=176, layers=2, heads=4, vocab=1000, examples=96, max_length=256,
           batch=4, rows=1, warmup=1, steps=2, gen_n=4, gen_batch=4, gen_tokens=8, workers=1)

MODES = {
    "faithful": [],
    "group_by_length": ["--group_by_length", "True"],
    "packed": ["--packing", "True"],
    "packed_sdpa": ["--packing", "True", "--packed_attention", "sdpa"],
    "lora": ["--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.05", "--lora_target_modules", "all-linear"],
    "gradient_checkpointing": ["--gradient_checkpointing", "True"],
    "fsdp": ["--fsdp", "full_shard auto_wrap", "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer"],
}


# ----------------------------------------------------------------------------------------------------
# One training run (a child process).

def _child(spec: dict) -> None:
    """Trains once with train.train(argv), timing the steps after the warm-up, and prints one line of figures."""
    import torch
    import transformers

    import train
    from alpaca_testkit.kernel_calls import count_kernel_forwards

    warmup, device_is_cuda = spec["warmup"], torch.cuda.is_available()
    clock, counts = {}, []

    def sync():
        if device_is_cuda:
            torch.cuda.synchronize()

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                sync()
                clock["start"] = time.perf_counter()
            elif state.global_step == args.max_steps:
                sync()
                clock["end"] = time.perf_counter()

    original_init = transformers.Trainer.__init__
    original_step = transformers.Trainer.training_step

    def timed_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(Clock())

    def counted_step(self, model, inputs, *args, **kwargs):
        # Kept as device tensors: reading them now would wait for the GPU at every step.
        pad = self.processing_class.pad_token_id
        counts.append(torch.stack([
            torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device),
            (inputs["input_ids"] != pad).sum(), (inputs["labels"][:, 1:] != -100).sum(),
        ]))
        return original_step(self, model, inputs, *args, **kwargs)

    # This process only: every Trainer (train.py's is a subclass) is timed and counts its batches.
    transformers.Trainer.__init__ = timed_init
    transformers.Trainer.training_step = counted_step

    # train.py's own log line of the packed attention it chose ("packed attention: varlen (torch 2.13, probe ok)").
    chosen = []

    class ChoiceLog(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("packed attention: "):
                chosen.append(record.getMessage()[len("packed attention: "):])

    packing_log = logging.getLogger("alpaca_lib.training.packed_attention")
    packing_log.addHandler(ChoiceLog())
    packing_log.setLevel(logging.INFO)
    if spec["mode"] != "fsdp":
        # The final save is timed in the fsdp run only: the other runs skip writing a 4 GB model.
        train._save_final_model = lambda *args, **kwargs: None
    if device_is_cuda:
        torch.cuda.reset_peak_memory_stats()

    with count_kernel_forwards() as kernel_forwards:  # the training forwards' calls, not the start-up probe's
        trainer = train.train(spec["argv"])
    if "start" not in clock or "end" not in clock:
        raise SystemExit(f"the step clock did not run (steps reached: {trainer.state.global_step}); train.py's "
                         "Trainer no longer calls transformers.Trainer.__init__, or --max_steps was not reached")
    timed = torch.stack(counts[warmup:]).sum(0).tolist() if len(counts) > warmup else [0, 0, 0]
    is_main = int(os.environ.get("RANK", "0")) == 0
    figures = {
        "seconds": clock["end"] - clock["start"], "steps": trainer.state.global_step - warmup,
        "warmup_steps": warmup, "computed_tokens": int(timed[0]), "tokens": int(timed[1]),
        "loss_tokens": int(timed[2]), "attention": "; ".join(chosen) or "not packed",
        "peak_mem_gb": (torch.cuda.max_memory_allocated() if device_is_cuda else peak_rss_mb() * 2 ** 20) / 2 ** 30,
        "mem_kind": "cuda_max_allocated" if device_is_cuda else "cpu_peak_rss",
        "distributed_type": trainer.accelerator.distributed_type.value,
        "kernel_forwards": dict(kernel_forwards),  # attention calls through each variable-length kernel
    }
    if spec["mode"] == "fsdp":
        figures["roundtrip"] = _compare_saved(trainer, spec) if is_main else None
    if is_main:
        print(CHILD_MARKER + json.dumps(figures), flush=True)


def _compare_saved(trainer, spec: dict) -> dict:
    """Reloads the saved final model and compares it with the trained weights and with the base model."""
    import torch
    from transformers import AutoModelForCausalLM

    trained = {k: v.detach().float().cpu() for k, v in trainer.accelerator.get_state_dict(trainer.model).items()}
    out = Path(spec["out"])
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    base = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).state_dict()
    missing = sorted(set(reloaded) ^ set(trained))
    diff = max(((reloaded[k] - trained[k]).abs().max().item() for k in reloaded if k in trained), default=float("nan"))
    changed = sum(1 for k in reloaded if k in base and reloaded[k].shape == base[k].shape
                  and not torch.equal(reloaded[k], base[k]))
    return {"files": sorted(p.name for p in out.iterdir() if p.is_file()), "tensors": len(reloaded),
            "keys_not_in_both": missing[:5], "max_abs_diff": diff, "changed_vs_base": changed}


# ----------------------------------------------------------------------------------------------------
# Generation (a child process): one prompt at a time against batches, then the eval_model.py command.

def _generate_child(spec: dict) -> None:
    from alpaca_lib.evaluation.outputs import GenerationSettings, LocalModel, prompt_of

    records = json.loads((REPO_ROOT / "eval_instructions.json").read_text(encoding="utf-8"))
    records += json.loads((REPO_ROOT / "alpaca_data.json").read_text(encoding="utf-8"))
    prompts = [prompt_of(r) for r in records[: spec["n"]]]
    lm = LocalModel.load(spec["model"])
    settings = GenerationSettings(max_new_tokens=spec["max_new_tokens"])

    def run(batch_size):
        _sync()
        t0 = time.perf_counter()
        answers = {i: a for idx, ans in lm.answer(prompts, settings, batch_size) for i, a in zip(idx, ans)}
        _sync()
        return answers, time.perf_counter() - t0

    run(spec["batch_size"])  # warm-up: kernels and allocator, out of both timings
    single, single_s = run(1)
    batched, batched_s = run(spec["batch_size"])
    tokens = sum(a.n_tokens for a in single.values())
    print(CHILD_MARKER + json.dumps({
        "n": len(prompts), "batch_size": spec["batch_size"], "max_new_tokens": spec["max_new_tokens"],
        "device": str(lm.device), "single_s": single_s, "batched_s": batched_s, "ratio": single_s / batched_s,
        "tokens": tokens, "single_tok_s": tokens / single_s, "batched_tok_s": tokens / batched_s,
        "identical": sum(single[i] == batched[i] for i in range(len(prompts))),
    }), flush=True)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------------
# The parent: build, run each mode, gather the figures.

def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    # bench/ too: under torchrun the child may be run by a launcher from another folder (the dry run's FSDP).
    paths = (str(REPO_ROOT), str(REPO_ROOT / "bench"), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def _run(cmd: list[str], name: str, log: list, timeout: float) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO_ROOT, timeout=timeout)
    text = proc.stdout + proc.stderr
    log.append(f"===== {name}: exit {proc.returncode} after {time.perf_counter() - t0:.1f} s\n$ {' '.join(cmd)}\n"
               f"{text[-20000:]}\n")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{text[-4000:]}")
    return json.loads(lines[-1][len(CHILD_MARKER):])


def _build_model(work: Path, cfg: dict, device) -> tuple[Path, int]:
    """Writes a random LLaMA of the configured shape and a tokenizer trained on the bundled data; returns (dir, params)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alpaca_lib.core.prompt import PROMPT_DICT
    from alpaca_testkit.tiny import build_tokenizer

    texts = [PROMPT_DICT["prompt_input"], PROMPT_DICT["prompt_no_input"]]
    texts += [r[k] for r in bundled_records() for k in ("instruction", "input", "output")]
    tokenizer = build_tokenizer(texts, vocab_size=cfg["vocab"])
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg["hidden"], intermediate_size=cfg["intermediate"],
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"], num_key_value_heads=cfg["heads"],
        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16)  # half the bytes to write and read; train.py loads it as float32 master weights
    out = work / "base"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # train.py adds a [PAD] row to the embeddings and the LM head before training (LLaMA has no pad token).
    params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    params += model.config.hidden_size  # the LM head's [PAD] row
    del model
    return out, params


def _matmul_tflops(device) -> float:
    """A large bf16 (on CPU: float32) matrix product's rate, as a measured ceiling."""
    import torch

    n, dtype, reps = (8192, torch.bfloat16, 10) if device.type == "cuda" else (512, torch.float32, 5)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def _train_argv(mode: str, cfg: dict, model: Path, data: Path, work: Path) -> list[str]:
    packed = MODES[mode][:2] == ["--packing", "True"]
    argv = [
        "--model_name_or_path", str(model), "--data_path", str(data), "--output_dir", str(work / f"out-{mode}"),
        "--bf16", "auto", "--tf32", "True", "--model_max_length", str(cfg["max_length"]),  # bf16 on the GPU
        "--per_device_train_batch_size", str(cfg["rows"] if packed else cfg["batch"]),
        "--max_steps", str(cfg["warmup"] + cfg["steps"]), "--learning_rate", "2e-5", "--weight_decay", "0.",
        "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--save_strategy", "no",
        "--evaluation_strategy", "no", "--logging_steps", "1000", "--report_to", "none", "--seed", "0",
        "--preprocessing_cache_dir", str(work / "cache"), "--disable_tqdm", "True",
        # No per-step wait for the loss (a NaN check reads it on the host), and batches collated while the GPU works.
        "--logging_nan_inf_filter", "False", "--dataloader_num_workers", str(cfg["workers"]),
        *MODES[mode],
    ]
    return argv


def _mode_command(mode: str, spec: dict, dry_run: bool) -> list[str]:
    child = [str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    if mode != "fsdp":
        return [sys.executable, *child]
    launcher = [str(REPO_ROOT / "tests" / "cpu_dist_launch.py")] if dry_run else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            *launcher, *child]


def _summarize(fig: dict, params: int, peak: float, measured: float) -> dict:
    s = fig["seconds"]
    flops = 6 * params * fig["tokens"] / s
    return {**fig, "tokens_per_s": fig["tokens"] / s, "loss_tokens_per_s": fig["loss_tokens"] / s,
            "computed_tokens_per_s": fig["computed_tokens"] / s, "model_tflops": flops / 1e12,
            "mfu": flops / (peak * 1e12), "mfu_vs_measured_matmul": flops / (measured * 1e12)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", dest="dry_run", action="store_true", help="rehearse on CPU with a tiny model")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help=f"peak dense bf16 TFLOP/s for MFU (default {H100_H200_BF16_TFLOPS}; on a dry run "
                             "the measured CPU matrix product)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    parser.add_argument("--out", default=os.environ.get("OUT") or None, help="folder for gpu_check.json and the log "
                        "(default $OUT; unset: nothing written)")
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        (_generate_child if spec["mode"] == "generate" else _child)(spec)
        return

    import torch
    import transformers

    cfg = DRY if args.dry_run else GPU
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"gpu_check.py: unknown --modes {unknown}; choose from {list(MODES)}")
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: no CUDA device; run with --dry-run to rehearse on CPU.")
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    log: list[str] = []

    def save() -> None:  # after each step too: a run stopped at its time limit still leaves what it measured
        report["total_seconds"] = time.perf_counter() - t_start
        _targets(report)
        if out:
            (out / "gpu_check.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
            (out / "gpu_check.log").write_text("".join(log), encoding="utf-8")

    report = {"dry_run": args.dry_run, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__, "modes": {}, "errors": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            work = Path(tmp)
            measured = _matmul_tflops(device)
            peak = args.peak_tflops or (measured if args.dry_run else H100_H200_BF16_TFLOPS)
            model_dir, params = _build_model(work, cfg, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            data = work / "data.json"
            data.write_text(json.dumps(synthesize_records(cfg["examples"])), encoding="utf-8")
            report.update(params=params, config={k: cfg[k] for k in ("hidden", "intermediate", "layers", "heads")},
                          vocab=len(transformers.AutoTokenizer.from_pretrained(model_dir)) + 1,
                          examples=cfg["examples"], peak_tflops=peak, measured_matmul_tflops=measured)
            print(f"model: {params / 1e6:,.1f}M parameters (without the input embedding), {cfg['layers']} layers of "
                  f"hidden {cfg['hidden']}; data: {cfg['examples']} examples; peak {peak:.3g} TFLOP/s (measured "
                  f"matrix product: {measured:.3g}); {report['device']}", flush=True)
            for mode in modes:
                spec = {"mode": mode, "warmup": cfg["warmup"], "out": str(work / f"out-{mode}"),
                        "model": str(model_dir), "argv": _train_argv(mode, cfg, model_dir, data, work)}
                try:
                    fig = _run(_mode_command(mode, spec, args.dry_run), mode, log, timeout=600)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    report["errors"][mode] = str(e)[-2000:]
                    print(f"{mode}: FAILED\n{str(e)[-2000:]}", flush=True)
                    save()
                    continue
                report["modes"][mode] = r = _summarize(fig, params, peak, measured)
                print(f"{mode:<23} {r['tokens_per_s']:>10.0f} tok/s {r['loss_tokens_per_s']:>10.0f} loss tok/s "
                      f"{r['peak_mem_gb']:>7.2f} GB  MFU {r['mfu']:6.1%}  ({r['steps']} steps, {r['seconds']:.2f} s)",
                      flush=True)
                save()
            gen_model = work / "out-fsdp" if "fsdp" in report["modes"] else model_dir
            gen = {"mode": "generate", "model": str(gen_model), "n": cfg["gen_n"], "batch_size": cfg["gen_batch"],
                   "max_new_tokens": cfg["gen_tokens"]}
            try:
                report["generation"] = g = _run([sys.executable, str(Path(__file__).resolve()), "--child",
                                                 json.dumps(gen)], "generate", log, timeout=600)
                print(f"generation: batches of {g['batch_size']} vs one at a time: {g['ratio']:.2f}x "
                      f"({g['batched_tok_s']:.0f} vs {g['single_tok_s']:.0f} tok/s; {g['identical']}/{g['n']} "
                      "answers identical)", flush=True)
                report["eval_model_outputs"] = _eval_model_cli(gen_model, work, cfg, log)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                report["errors"]["generate"] = str(e)[-2000:]
                print(f"generation: FAILED\n{str(e)[-2000:]}", flush=True)
    finally:
        save()
    m = report["modes"]
    figures = {f"{k}_tok_s": f"{v['tokens_per_s']:.0f}" for k, v in m.items()}
    figures.update({f"{k}_mfu": f"{v['mfu']:.3f}" for k, v in m.items()})
    if "generation" in report:
        figures["generation_x"] = f"{report['generation']['ratio']:.2f}"
    if "fsdp" in m and m["fsdp"].get("roundtrip"):
        figures["fsdp_roundtrip_diff"] = m["fsdp"]["roundtrip"]["max_abs_diff"]
    figures["failed"] = ",".join(report["errors"]) or "none"
    print(f"total {report['total_seconds']:.0f} s; targets: {report.get('targets')}")
    print(with_machine("RESULT " + " ".join(f"{k}={v}" for k, v in figures.items())), flush=True)
    if report["errors"]:
        raise SystemExit(1)


def _eval_model_cli(model_dir: Path, work: Path, cfg: dict, log: list) -> dict:
    """Runs `eval_model.py outputs` on the model once (batched), as a user would; returns its time and record count."""
    path = work / "model_outputs.json"
    cmd = [sys.executable, str(REPO_ROOT / "eval_model.py"), "outputs", "--model_dir", str(model_dir),
           "--instructions_path", str(REPO_ROOT / "eval_instructions.json"), "--output_path", str(path),
           "--batch_size", str(cfg["gen_batch"]), "--max_new_tokens", str(cfg["gen_tokens"])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO_ROOT, timeout=600)
    seconds = time.perf_counter() - t0
    log.append(f"===== eval_model.py outputs: exit {proc.returncode} after {seconds:.1f} s\n"
               f"{(proc.stdout + proc.stderr)[-5000:]}\n")
    if proc.returncode != 0:
        raise RuntimeError(f"eval_model.py outputs failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    records = json.loads(path.read_text(encoding="utf-8"))
    print(f"eval_model.py outputs: {len(records)} answers in {seconds:.1f} s (model load included)", flush=True)
    return {"records": len(records), "seconds": seconds}


def _targets(report: dict) -> None:
    """The issue's targets for the GPU run: packed MFU >= 40% and packed >= 1.5x faithful tokens/s."""
    m = report["modes"]
    if "packed" in m and "faithful" in m:
        mfu, x = m["packed"]["mfu"], m["packed"]["tokens_per_s"] / m["faithful"]["tokens_per_s"]
        report["targets"] = {"packed_mfu": round(mfu, 4), "packed_vs_faithful": round(x, 3),
                             "met": bool(mfu >= 0.40 and x >= 1.5)}


if __name__ == "__main__":
    main()
