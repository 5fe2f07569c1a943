"""A training file's report card: sizes, token lengths, what training drops or truncates, duplicates.

    python prepare_data.py report --data_path alpaca_data.json --tokenizer <model_dir> \
        --model_max_length 512 --output_dir data_report

`build_report` computes the numbers (a dict, written as `report.json`); `write_report` writes it and
`lengths.png`, a histogram of prompt, response and total token lengths with the max length marked.
The masking numbers are training's own (`alpaca_lib.data.tokenizing.encode_pairs`): an example whose prompt
fills `model_max_length` is dropped in training; one whose response is cut loses its EOS. Near
duplicates are decided by the generator's exact ROUGE-L pool (`alpaca_lib.core.rouge`), in
file order, as the generator decides for new instructions: a record is a near duplicate when its
instruction scores above the threshold against an earlier instruction that was kept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from alpaca_lib.core.fileio import atomic_write
from alpaca_lib.core.progress import progress_bar
from alpaca_lib.core.rouge import RougeLPool
from alpaca_lib.data.tokenizing import encode_pairs, sources_and_targets

PERCENTILES = (50, 90, 95, 99)
_UNTRUNCATED = 1 << 30  # a max length no text reaches: token lengths as they are
_ROUGE_CHUNK = 512  # candidates per ROUGE-L batch: bounds the LCS matrix at chunk x pool


def _summary(lengths: np.ndarray) -> Dict[str, float]:
    if lengths.size == 0:
        return {"mean": 0.0, "max": 0, **{f"p{p}": 0.0 for p in PERCENTILES}}
    out = {"mean": round(float(lengths.mean()), 2)}
    out.update({f"p{p}": round(float(np.percentile(lengths, p)), 2) for p in PERCENTILES})
    out["max"] = int(lengths.max())
    return out


def token_lengths(records: Sequence[dict], tokenizer, batch_size: int = 4096) -> Dict[str, np.ndarray]:
    """Untruncated token counts of each record's prompt and whole example (prompt + output + EOS).

    Returns:
        {"prompt", "total", "merges"}: int64 arrays of the prompt's and the example's lengths, and
        the number of examples whose tokenized prompt is not a prefix of the tokenized example.
    """
    prompt, total, merges = [], [], 0
    bar = progress_bar(total=len(records), desc="report: tokenizing", unit="record")
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        sources, targets = sources_and_targets(batch, tokenizer.eos_token)
        ids, source_lens, m = encode_pairs(sources, targets, tokenizer, _UNTRUNCATED)
        prompt.extend(source_lens)
        total.extend(len(x) for x in ids)
        merges += m
        bar.update(len(batch))
    bar.close()
    return {"prompt": np.asarray(prompt, np.int64), "total": np.asarray(total, np.int64), "merges": merges}


def near_duplicates(instructions: Sequence[str], threshold: float = 0.7, workers: int = 2) -> int:
    """How many instructions score above `threshold` against an earlier kept one (the generator's rule)."""
    pool = RougeLPool([], workers=workers)
    rejected = 0
    bar = progress_bar(total=len(instructions), desc="report: near duplicates", unit="instruction")
    for start in range(0, len(instructions), _ROUGE_CHUNK):
        decisions = pool.filter_batch(list(instructions[start : start + _ROUGE_CHUNK]), threshold, top_k=1)
        rejected += sum(not d.kept for d in decisions)
        bar.update(len(decisions))
    bar.close()
    return rejected


def build_report(records: Sequence[dict], tokenizer, model_max_length: int, threshold: float = 0.7,
                 workers: int = 2) -> dict:
    """The report's numbers for checked Alpaca records (see the module docstring for each key)."""
    timings = {}
    t0 = time.perf_counter()
    lengths = token_lengths(records, tokenizer)
    timings["tokenize_s"] = round(time.perf_counter() - t0, 2)
    m = model_max_length
    prompt, total = lengths["prompt"], lengths["total"]
    fills = np.minimum(prompt, m) >= np.minimum(total, m)  # no response token left: dropped in training
    truncated = ~fills & (total > m)  # the response is cut: its EOS is lost

    seen, exact = set(), 0
    for r in records:
        key = (r["instruction"], r.get("input", ""))
        exact += key in seen
        seen.add(key)
    t0 = time.perf_counter()
    near = near_duplicates([r["instruction"] for r in records], threshold, workers)
    timings["rouge_s"] = round(time.perf_counter() - t0, 2)

    chars = non_ascii = 0
    for r in records:
        for key in ("instruction", "input", "output"):
            text = r.get(key, "")
            chars += len(text)
            if not text.isascii():
                non_ascii += sum(1 for c in text if ord(c) > 127)
    return {
        "records": len(records),
        "with_input": sum(1 for r in records if r.get("input", "") != ""),
        "model_max_length": m,
        "tokens": {"prompt": _summary(prompt), "response": _summary(total - prompt), "total": _summary(total)},
        "prompt_fills_max_length": int(fills.sum()),
        "response_truncated": int(truncated.sum()),
        "boundary_merges": int(lengths["merges"]),
        "exact_duplicate_instructions": exact,
        "near_duplicate_instructions": near,
        "similarity_threshold": threshold,
        "empty_outputs": sum(1 for r in records if not r["output"].strip()),
        "blank_instructions": sum(1 for r in records if not r["instruction"].strip()),
        "non_ascii_share": round(non_ascii / chars, 6) if chars else 0.0,
        "timings": timings,
        "_lengths": {"prompt": prompt, "response": total - prompt, "total": total},
    }


def format_report(report: dict) -> str:
    """The report as lines a person reads."""
    n = report["records"]
    pct = lambda k: f"{report[k]} ({100 * report[k] / max(1, n):.1f}%)"  # noqa: E731
    lines = [
        f"records: {n}, with input: {pct('with_input')}",
        f"tokens (model_max_length {report['model_max_length']}):",
    ]
    for part in ("prompt", "response", "total"):
        s = report["tokens"][part]
        lines.append(f"  {part:<8} mean {s['mean']:7.1f}  " + "  ".join(f"p{p} {s[f'p{p}']:6.0f}" for p in PERCENTILES)
                     + f"  max {s['max']}")
    lines += [
        f"prompt fills model_max_length (dropped in training): {pct('prompt_fills_max_length')}",
        f"response truncated (EOS lost; --drop_truncated_responses drops them): {pct('response_truncated')}",
        f"prompt/response boundary merged by the tokenizer: {pct('boundary_merges')}",
        f"exact duplicate instructions (instruction and input repeat an earlier record): "
        f"{pct('exact_duplicate_instructions')}",
        f"near-duplicate instructions (ROUGE-L > {report['similarity_threshold']} against an earlier kept one): "
        f"{pct('near_duplicate_instructions')}",
        f"empty or whitespace-only outputs: {pct('empty_outputs')}",
        f"blank instructions: {pct('blank_instructions')}",
        f"non-ASCII characters: {100 * report['non_ascii_share']:.2f}%",
    ]
    return "\n".join(lines)


def write_report(report: dict, output_dir: str | Path, title: str = "") -> List[Path]:
    """Writes `report.json` and `lengths.png` into `output_dir` (each atomically); returns their paths."""
    import matplotlib  # here, not at the top: only the chart needs it, and it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lengths = report["_lengths"]
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    json_path, png_path = out / "report.json", out / "lengths.png"
    with atomic_write(json_path) as f:
        json.dump(public, f, indent=2)
        f.write("\n")

    m = report["model_max_length"]
    top = max(int(lengths["total"].max()) if lengths["total"].size else 1, m) + 1
    bins = np.linspace(0, top, 61)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for part, color in (("prompt", "tab:blue"), ("response", "tab:orange"), ("total", "tab:gray")):
        ax.hist(lengths[part], bins=bins, histtype="step" if part == "total" else "stepfilled",
                alpha=0.9 if part == "total" else 0.55, color=color, linewidth=1.5, label=f"{part} tokens")
    ax.axvline(m, color="tab:red", linestyle="--", linewidth=1.2)
    ax.text(m, ax.get_ylim()[1] * 0.95, f" model_max_length {m}\n {report['response_truncated']} responses cut,\n"
            f" {report['prompt_fills_max_length']} prompts fill it", color="tab:red", va="top", fontsize=8)
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.set_title(f"Token lengths of {report['records']} records" + (f": {title}" if title else ""), fontsize=10)
    ax.legend(loc="upper right" if m < top * 0.6 else "upper left", fontsize=8)
    fig.tight_layout()
    with atomic_write(png_path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return [json_path, png_path]
