"""Training throughput and peak memory of train.py's modes: faithful, group_by_length, packed, LoRA.

    .venv/bin/python bench/bench_train_modes.py                  # ~2 minutes on 2 CPU cores (--repeat 3: ~5)
    .venv/bin/python bench/bench_train_modes.py --examples 240 --repeat 2 --skip_lora

Part 1 (throughput): a 7M-parameter LLaMA (hidden 256, 4 layers, built on the fly with a BPE tokenizer
of 8,000 tokens trained on the bundled alpaca_data.json) trains one epoch with `--model_max_length 512`
in each mode, over the same examples: Alpaca records of realistic length recombined from the bundled
alpaca_data.json (`benchutil.synthesize_records`; the same ones in every run):

- faithful: the original recipe's random padded batches of 4;
- group_by_length: the same, batches of 4 examples of similar length (`--group_by_length True`);
- packed: `--packing True --per_device_train_batch_size 1`, one padding-free row of up to 512 tokens per
  step (about as many examples per step as the batches of 4 hold);
- packed_all_logits: the same, with the LM head run on every position as in the padded modes (packed
  training runs it on the loss-bearing positions only): how much of packing's gain comes from that.

Part 2 (memory): a ~170M-parameter LLaMA (hidden 1024, 12 layers) takes a few optimizer steps with full
fine-tuning and with `--lora_r 8`; at that size the weights, gradients and AdamW state dominate memory, as
they do for 7B models, rather than the Python and torch runtime.

Each run is its own child process calling `train.train(argv)`, so each reports its own peak RSS (VmHWM);
throughput is loss-bearing tokens per second of `trainer.train()` wall time (also per CPU-second, which
other jobs on a shared machine disturb less). With --repeat, modes run interleaved and the best round of
each is kept. On a GPU the same script reports model FLOPs per second and, given --peak_tflops, MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchutil import bundled_records, peak_rss_mb, synthesize_records, time_every_trainer, with_machine

THROUGHPUT_MODES = {
    "faithful": ["--per_device_train_batch_size", "4"],
    "group_by_length": ["--per_device_train_batch_size", "4", "--group_by_length", "True"],
    "packed": ["--per_device_train_batch_size", "1", "--packing", "True"],
    "packed_all_logits": ["--per_device_train_batch_size", "1", "--packing", "True"],
}
ALL_LOGITS_ENV = "BENCH_PACKED_ALL_LOGITS"  # set for the packed_all_logits child only
CHILD_MARKER = "CHILD_FIGURES "  # starts the one line of figures a child prints
MEMORY_MODES = {
    "full": [],
    "lora": ["--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.05"],
}


def _child(argv_json: str) -> None:
    """Trains once in this fresh process and prints one JSON line with the figures."""
    import torch

    import alpaca_lib.training.packed_model
    import train
    from alpaca_lib.core.modeling import IGNORE_INDEX

    argv = json.loads(argv_json)
    clock = time_every_trainer()
    all_logits = bool(os.environ.get(ALL_LOGITS_ENV))
    if all_logits:  # as for a model that takes no logits_to_keep mask
        alpaca_lib.training.packed_model.supports_supervised_logits = lambda model, probe=True: False
    trainer = train.train(argv)
    if "wall" not in clock:
        raise SystemExit("the timing callback never ran: train.py's Trainer no longer calls transformers.Trainer.__init__")
    if all_logits and getattr(trainer.data_collator, "supervised_logits_only", False):
        raise SystemExit("the LM head still ran on loss-bearing positions only: the patch of "
                         "alpaca_lib.training.packed_model.supports_supervised_logits no longer reaches train.py")
    # One more pass of the data loader (no model) counts the tokens each step computed, padding included.
    computed = loss_tokens = steps = 0
    for batch in trainer.get_train_dataloader():
        computed += batch["input_ids"].numel()
        loss_tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        steps += 1
    if trainer.args.max_steps > 0:  # a fixed number of steps: count only those
        scale = trainer.state.global_step / max(1, steps)
        computed, loss_tokens, steps = int(computed * scale), int(loss_tokens * scale), trainer.state.global_step
    params = sum(p.numel() for p in trainer.model.parameters())
    print(CHILD_MARKER + json.dumps({
        "wall": clock["wall"], "cpu": clock["cpu"], "loss_tokens": loss_tokens, "computed": computed, "steps": steps,
        "train_loss": trainer.state.log_history[-1].get("train_loss"), "peak_rss_mb": peak_rss_mb(),
        "params": params, "cuda": torch.cuda.is_available(),
    }), flush=True)


def _run_child(argv, log_dir: Path, name: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop(ALL_LOGITS_ENV, None)
    if name == "packed_all_logits":
        env[ALL_LOGITS_ENV] = "1"
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(argv)], capture_output=True, text=True,
                          env=env, cwd=log_dir)
    (log_dir / f"{name}.log").write_text(proc.stdout + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARKER)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); its log: {log_dir / f'{name}.log'}\n"
                         f"{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(lines[-1][len(CHILD_MARKER):])


def _build(work: Path, records, hidden: int, layers: int, heads: int, name: str) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    from alpaca_lib.core.prompt import PROMPT_DICT
    from alpaca_testkit.tiny import build_tokenizer, tiny_llama_config

    texts = [PROMPT_DICT["prompt_input"], PROMPT_DICT["prompt_no_input"]]
    texts += [r.get(k, "") for r in records for k in ("instruction", "input", "output")]
    tokenizer = build_tokenizer(texts, vocab_size=8000)
    torch.manual_seed(0)
    config = tiny_llama_config(len(tokenizer), hidden_size=hidden, num_layers=layers, num_heads=heads,
                               max_position_embeddings=1024)
    model = LlamaForCausalLM(config)
    out = work / name
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _common_args(model_dir: Path, data: Path, out: Path, cache: Path, max_length: int):
    return [
        "--model_name_or_path", str(model_dir), "--data_path", str(data), "--output_dir", str(out),
        "--learning_rate", "2e-5", "--weight_decay", "0.", "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine",
        "--logging_steps", "1000", "--save_strategy", "no", "--evaluation_strategy", "no", "--report_to", "none",
        "--model_max_length", str(max_length), "--preprocessing_cache_dir", str(cache), "--seed", "0",
        "--disable_tqdm", "True",
    ]


def _best(runs):
    return max(runs, key=lambda r: r["loss_tokens"] / r["wall"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--examples", type=int, default=480, help="examples trained on in each throughput run")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds; the best of each mode is kept")
    parser.add_argument("--lora_steps", type=int, default=3, help="optimizer steps of each memory run")
    parser.add_argument("--skip_lora", action="store_true", help="skip part 2 (memory of LoRA vs full)")
    parser.add_argument("--peak_tflops", type=float, default=0.0, help="accelerator peak TFLOP/s, to print MFU")
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return

    records = bundled_records()  # the tokenizers' training corpus
    subset = synthesize_records(args.examples)
    print(f"data: {len(subset)} examples synthesized from the bundled alpaca_data.json; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-modes-") as tmp:
        work = Path(tmp)
        data = work / "data.json"
        data.write_text(json.dumps(subset))
        small = _build(work, records, hidden=256, layers=4, heads=4, name="llama-7m")

        results = {m: [] for m in THROUGHPUT_MODES}
        for _ in range(args.repeat):
            for mode, extra in THROUGHPUT_MODES.items():
                argv = _common_args(small, data, work / f"out-{mode}", work / "cache", 512)
                results[mode].append(_run_child([*argv, "--num_train_epochs", "1", *extra], work, mode))
        best = {m: _best(rs) for m, rs in results.items()}
        base = best["faithful"]
        print(f"\nthroughput: {best['faithful']['params'] / 1e6:.1f}M-parameter LLaMA, one epoch over "
              f"{len(subset)} examples, model_max_length 512, best of {args.repeat} round(s)")
        print(f"{'mode':<18}{'steps':>6}{'computed tok':>13}{'loss tok':>10}{'wall s':>8}{'loss tok/s':>11}"
              f"{'x faithful':>11}{'tok/CPU-s':>10}{'x faithful':>11}{'peak RSS MB':>12}{'train loss':>11}")
        for mode, r in best.items():
            tps, cps = r["loss_tokens"] / r["wall"], r["loss_tokens"] / r["cpu"]
            print(f"{mode:<18}{r['steps']:>6}{r['computed']:>13}{r['loss_tokens']:>10}{r['wall']:>8.1f}{tps:>11.0f}"
                  f"{tps / (base['loss_tokens'] / base['wall']):>11.2f}{cps:>10.0f}"
                  f"{cps / (base['loss_tokens'] / base['cpu']):>11.2f}{r['peak_rss_mb']:>12.0f}"
                  f"{r['train_loss'] or float('nan'):>11.4f}")
            if r["cuda"]:
                flops = 6 * r["params"] * r["computed"] / r["wall"]
                mfu = f", MFU {flops / (args.peak_tflops * 1e12):.1%}" if args.peak_tflops else ""
                print(f"{'':<18}model FLOP/s {flops / 1e12:.2f} T{mfu}")
        rate = {m: r["loss_tokens"] / r["wall"] for m, r in best.items()}
        figures["faithful_tok_s"] = f"{rate['faithful']:.0f}"
        figures.update({f"{m}_x": f"{rate[m] / rate['faithful']:.2f}" for m in rate if m != "faithful"})

        if not args.skip_lora:
            big = _build(work, records, hidden=1024, layers=12, heads=16, name="llama-170m")
            mem = {}
            for mode, extra in MEMORY_MODES.items():
                argv = _common_args(big, data, work / f"out-{mode}", work / "cache", 256)
                mem[mode] = _run_child([*argv, "--max_steps", str(args.lora_steps),
                                        "--per_device_train_batch_size", "4", *extra], work, mode)
            full, lora = mem["full"], mem["lora"]
            print(f"\nmemory: {full['params'] / 1e6:.0f}M-parameter LLaMA, {args.lora_steps} steps of 4 examples, "
                  "float32 weights, AdamW")
            print(f"{'mode':<16}{'peak RSS MB':>12}{'x full':>8}{'loss tok/s':>11}")
            for mode, r in mem.items():
                print(f"{mode:<16}{r['peak_rss_mb']:>12.0f}{r['peak_rss_mb'] / full['peak_rss_mb']:>8.2f}"
                      f"{r['loss_tokens'] / r['wall']:>11.0f}")
            figures["full_rss_mb"] = f"{full['peak_rss_mb']:.0f}"
            figures["lora_rss_mb"] = f"{lora['peak_rss_mb']:.0f}"
            figures["lora_rss_x"] = f"{lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}"
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(with_machine("RESULT " + " ".join(f"{k}={v}" for k, v in figures.items())))


if __name__ == "__main__":
    main()
