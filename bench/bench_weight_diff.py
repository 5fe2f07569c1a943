"""Peak memory (RSS) and time of `weight_diff.py recover`, streaming vs the original whole-model method.

    .venv/bin/python bench/bench_weight_diff.py                    # ~310M-parameter LLaMA, ~2 minutes
    .venv/bin/python bench/bench_weight_diff.py --repeat 2         # interleaved runs, best time kept
    .venv/bin/python bench/bench_weight_diff.py --layers 8         # smaller and quicker

Builds a random LLaMA-architecture model on the fly (no download) in the layout of the Alpaca
release: the raw model as float16 sharded safetensors with a tokenizer that has no pad token, and a
float32 diff (one more vocabulary row) as sharded `.bin` files with `pytorch_model.bin.index.json`.
Each method then runs in its own child process, which reports its own peak RSS
(VmHWM from /proc/self/status, else `getrusage(RUSAGE_SELF).ru_maxrss`) and wall time:

- whole-model: the original approach (both models loaded in float32, state dicts added in place,
  naive sum, `save_pretrained`), i.e. `alpaca_testkit.whole_model.whole_model_recover`;
- streaming: `weight_diff.recover` on the same released-layout diff, with glibc's mmap threshold set as
  `weight_diff.py`'s command line sets it (`alpaca_lib.weightdiff.allocator`);
- stream+verify: `weight_diff.recover` on the same diff re-written by `weight_diff.make_diff`
  (sharded safetensors with the SHA-256 manifest, every tensor verified).

The outputs of the methods are compared bit for bit at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import REPO_ROOT, peak_rss_mb, with_machine


def _child(method: str, path_raw: str, path_diff: str, path_out: str) -> None:
    """Runs one method in this (fresh) process and prints one JSON line with its figures."""
    # Imports (torch, transformers' LLaMA classes, this project) happen before the clock starts, for both.
    import torch  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401

    import weight_diff
    from alpaca_lib.weightdiff.allocator import big_allocations_use_mmap
    from alpaca_testkit.whole_model import whole_model_recover

    if method != "whole":
        big_allocations_use_mmap()  # what `weight_diff.py`'s main() does before its command runs
    baseline = peak_rss_mb()
    start = time.perf_counter()
    if method == "whole":
        _, total = whole_model_recover(path_raw, path_diff, path_out)
    else:
        weight_diff.recover(path_raw, path_diff, path_out, test_inference=False, check_integrity_naively=False)
        total = None
    seconds = time.perf_counter() - start
    print(json.dumps({"method": method, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "baseline_mb": baseline, "sum": total}))


def _run_child(method: str, path_raw: Path, path_diff: Path, path_out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", method, str(path_raw), str(path_diff), str(path_out)],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        sys.exit(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _build(work: Path, hidden: int, layers: int, shard_mb: int, seed: int) -> tuple[Path, Path, int]:
    """Writes the raw model (fp16 safetensors, sharded) and a released-layout diff (fp32 .bin, sharded)."""
    import torch
    from transformers import LlamaForCausalLM

    from alpaca_testkit.tiny import build_tokenizer, tiny_llama_config

    tokenizer = build_tokenizer(vocab_size=4000)
    config = tiny_llama_config(len(tokenizer), hidden_size=hidden, num_layers=layers, num_heads=hidden // 64)
    torch.manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    n_params = sum(s.numel() for s in shapes.values())
    raw_dir, diff_dir = work / "raw", work / "diff_released"
    raw_dir.mkdir()
    diff_dir.mkdir()
    # Raw: random weights straight to disk shard by shard, so building never holds the whole model.
    from alpaca_lib.weightdiff.weights import SafetensorsWriter

    items = [(k, tuple(s), torch.float16) for k, s in shapes.items()]
    writer = SafetensorsWriter(raw_dir, items, shard_mb << 20)
    for k, s in shapes.items():
        writer.write(k, (torch.randn(s) * 0.02).half())
    writer.close()
    config.save_pretrained(raw_dir)
    tokenizer.save_pretrained(raw_dir)
    # Diff: small float32 deltas with one more vocabulary row ([PAD]), in .bin shards with an index.
    config.vocab_size += 1
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    weight_map, part, part_bytes, n = {}, {}, 0, 0

    def flush():
        nonlocal part, part_bytes, n
        n += 1
        name = f"pytorch_model-{n:05d}.bin"
        torch.save(part, diff_dir / name)
        weight_map.update({k: name for k in part})
        part, part_bytes = {}, 0

    for k, s in shapes.items():
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            s = torch.Size((s[0] + 1, *s[1:]))
        part[k] = torch.randn(s) * 1e-3
        part_bytes += part[k].numel() * 4
        if part_bytes >= 2 * (shard_mb << 20):
            flush()
    if part:
        flush()
    # Rename to the -of-N pattern once N is known.
    renamed = {}
    for i in range(1, n + 1):
        old, new = f"pytorch_model-{i:05d}.bin", f"pytorch_model-{i:05d}-of-{n:05d}.bin"
        (diff_dir / old).rename(diff_dir / new)
        renamed[old] = new
    index = {"metadata": {"total_size": sum(torch.Size(s).numel() * 4 for s in shapes.values())},
             "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
    (diff_dir / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(diff_dir)
    tokenizer.save_pretrained(diff_dir)
    return raw_dir, diff_dir, n_params


def _same_weights(a: Path, b: Path) -> bool:
    import torch

    from alpaca_lib.weightdiff.weights import Checkpoint

    ca, cb = Checkpoint(a), Checkpoint(b)
    if sorted(ca.infos) != sorted(cb.infos):
        return False
    return all(torch.equal(ca.load(k).view(torch.int32), cb.load(k).view(torch.int32)) for k in ca.infos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--shard_mb", type=int, default=200, help="raw shard size (the diff's are twice that)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method, interleaved; best time is kept")
    parser.add_argument("--workdir", default=None, help="where to build the models (default: a temp folder, removed)")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "RAW", "DIFF", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-weight-diff-", dir=args.workdir))
    try:
        t = time.perf_counter()
        raw, diff, n_params = _build(work, args.hidden, args.layers, args.shard_mb, seed=0)
        print(f"model: {n_params / 1e6:.0f}M parameters ({n_params * 4 / 2**30:.2f} GiB in float32); "
              f"built in {time.perf_counter() - t:.0f} s", flush=True)
        import weight_diff

        # Untimed setup: the same diff re-made by make_diff (safetensors + manifest) from a recovered model.
        weight_diff.recover(raw, diff, work / "tuned", test_inference=False, check_integrity_naively=False)
        weight_diff.make_diff(raw, work / "tuned", work / "diff_manifest")
        shutil.rmtree(work / "tuned")
        runs = {"whole": [], "stream": [], "manifest": []}
        for r in range(args.repeat):  # interleaved, so a busy machine slows all methods alike
            for name, method, path_diff in (("whole", "whole", diff), ("stream", "stream", diff),
                                            ("manifest", "stream", work / "diff_manifest")):
                out = work / f"out_{name}"
                shutil.rmtree(out, ignore_errors=True)
                runs[name].append(_run_child(method, raw, path_diff, out))
                print(f"  run {r + 1} {name:8s}: {runs[name][-1]['seconds']:6.1f} s  peak RSS "
                      f"{runs[name][-1]['peak_rss_mb']:6.0f} MB", flush=True)
        # the best time of each method (noise only ever adds time); its largest peak
        whole, stream, manifest = ({"seconds": min(x["seconds"] for x in v), "peak_rss_mb": max(x["peak_rss_mb"] for x in v),
                                    "baseline_mb": v[0]["baseline_mb"]} for v in runs.values())
        for label, r in (("whole-model", whole), ("streaming", stream), ("stream+verify", manifest)):
            print(f"{label:14s}: {r['seconds']:6.1f} s   peak RSS {r['peak_rss_mb']:7.0f} MB")
        print(f"(process baseline after importing torch+transformers: {stream['baseline_mb']:.0f} MB)")
        print(f"peak memory streaming/whole: {stream['peak_rss_mb'] / whole['peak_rss_mb']:.2f} "
              f"(with manifest check {manifest['peak_rss_mb'] / whole['peak_rss_mb']:.2f})")
        print(f"speed-up whole/streaming: {whole['seconds'] / stream['seconds']:.2f}x "
              f"(with manifest check {whole['seconds'] / manifest['seconds']:.2f}x)")
        same = _same_weights(work / "out_whole", work / "out_stream") and _same_weights(work / "out_whole", work / "out_manifest")
        print(f"outputs bit-identical to whole-model: {same}")
        print(with_machine(f"RESULT params_m={n_params / 1e6:.0f} whole_s={whole['seconds']:.1f} stream_s={stream['seconds']:.1f} "
              f"verify_s={manifest['seconds']:.1f} whole_mb={whole['peak_rss_mb']:.0f} stream_mb={stream['peak_rss_mb']:.0f} "
              f"verify_mb={manifest['peak_rss_mb']:.0f} rss_ratio={stream['peak_rss_mb'] / whole['peak_rss_mb']:.2f} "
              f"speedup={whole['seconds'] / stream['seconds']:.2f} identical={same}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
