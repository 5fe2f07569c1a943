"""A training file's report card: sizes, token lengths, what training drops or truncates, duplicates.

    python prepare_data.py report --data_path alpaca_data.json --tokenizer <model_dir> \
        --model_max_length 512 --output_dir data_report
    python prepare_data.py report --data_path chat.jsonl --tokenizer <model_dir> --prompt_template chat ...

`build_report` computes the numbers (a dict, written as `report.json`); `write_report` writes it and
`lengths.png`, a histogram of prompt, response and total token lengths with the max length marked.
The masking numbers are training's own: under Alpaca's prompts (or a template file's) those of
`alpaca_lib.data.tokenizing.encode_pairs`, under `chat` those of `alpaca_lib.data.conversations.encode_chats`
on the tokenizer's chat template (an Alpaca record is then one user and one assistant turn). "prompt" counts
the tokens outside the loss, "response" those in it (under chat: what the assistant says, with its end-of-turn
token). An example with no token in the loss within `model_max_length` is dropped in training; one whose last
loss token is past it loses its EOS (its end of turn). Near duplicates are decided by the generator's exact
ROUGE-L pool (`alpaca_lib.core.rouge`), in file order, as the generator decides for new instructions: a record
is a near duplicate when its instruction (a conversation's: its first user turn) scores above the threshold
against an earlier instruction that was kept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from alpaca_lib.core.fileio import atomic_write
from alpaca_lib.core.progress import progress_bar
from alpaca_lib.core.rouge import RougeLPool
from alpaca_lib.data.conversations import encode_chats, is_conversation, turns_of
from alpaca_lib.data.formats import PromptFormat, has_generation_marks, load_prompt_format
from alpaca_lib.data.tokenizing import encode_pairs

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


def token_lengths(records: Sequence[dict], tokenizer, batch_size: int = 4096,
                  prompt_format: Optional[PromptFormat] = None, max_length: int = _UNTRUNCATED
                  ) -> Dict[str, np.ndarray]:
    """Untruncated token counts of each record's example, and where its tokens in the loss are.

    Args:
        records: checked records (`alpaca_lib.data.sources.DataSource.records`); conversations only under chat.
        prompt_format: Alpaca's (the default), a template file's, or chat.
        max_length: where training cuts the examples, for `loss_within`.
    Returns:
        int64 arrays: "total" (the example's tokens), "prompt" (those outside the loss), "first" and "last"
        (the position of the first token in the loss, and one past the last; both "total" when none is),
        "loss_within" (tokens in the loss before `max_length`); and "merges": under Alpaca's prompts, examples
        whose tokenized prompt is not a prefix of the tokenized example; under chat, examples with a token that
        straddles an assistant turn's edge.
    """
    fmt = prompt_format or load_prompt_format()
    total, loss, first, last, within, merges = [], [], [], [], [], 0
    bar = progress_bar(total=len(records), desc="report: tokenizing", unit="record")
    if fmt.is_chat:
        marks = has_generation_marks(tokenizer)
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            for ids, mask, flags in encode_chats([fmt.messages(r) for r in batch], tokenizer, marks):
                where = np.flatnonzero(mask)
                total.append(len(ids))
                loss.append(where.size)
                first.append(int(where[0]) if where.size else len(ids))
                last.append(int(where[-1]) + 1 if where.size else len(ids))
                within.append(int((where < max_length).sum()))
                merges += flags["boundary_merges"] > 0
            bar.update(len(batch))
    else:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            sources = [fmt.prompt(r) for r in batch]
            targets = [f"{r['output']}{tokenizer.eos_token}" for r in batch]
            ids, source_lens, m = encode_pairs(sources, targets, tokenizer, _UNTRUNCATED)
            for example, prompt in zip(ids, source_lens):  # the loss: every token after the prompt
                total.append(len(example))
                loss.append(len(example) - prompt)
                first.append(prompt)
                last.append(len(example))
                within.append(max(0, min(len(example), max_length) - min(prompt, max_length)))
            merges += m
            bar.update(len(batch))
    bar.close()
    out = {k: np.asarray(v, np.int64) for k, v in
           (("total", total), ("first", first), ("last", last), ("loss_within", within))}
    out["prompt"] = out["total"] - np.asarray(loss, np.int64)
    out["merges"] = merges
    return out


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


def _instruction(record: dict) -> Tuple[str, str]:
    """A record's instruction and input; a conversation's instruction is its first user turn."""
    if is_conversation(record):
        return next(m["content"] for m in record["messages"] if m["role"] == "user"), ""
    return record["instruction"], record.get("input", "")


def _texts(record: dict) -> List[str]:
    if is_conversation(record):
        return [m["content"] for m in record["messages"]]
    return [record.get(k, "") for k in ("instruction", "input", "output")]


def build_report(records: Sequence[dict], tokenizer, model_max_length: int, threshold: float = 0.7,
                 workers: int = 2, prompt_format: Optional[PromptFormat] = None) -> dict:
    """The report's numbers for checked records (see the module docstring for each key).

    Args:
        records: Alpaca records, and under chat conversations too (`DataSource.check_format` refuses them
            otherwise).
        prompt_format: training's `--prompt_template` (Alpaca's by default).
    """
    fmt = prompt_format or load_prompt_format()
    timings = {}
    t0 = time.perf_counter()
    lengths = token_lengths(records, tokenizer, prompt_format=fmt, max_length=model_max_length)
    timings["tokenize_s"] = round(time.perf_counter() - t0, 2)
    m = model_max_length
    prompt, total = lengths["prompt"], lengths["total"]
    fills = lengths["first"] >= np.minimum(total, m)  # no token in the loss before the cut: dropped in training
    truncated = ~fills & (lengths["last"] > m)  # the last token in the loss is cut: the EOS (end of turn) is lost

    instructions = [_instruction(r) for r in records]
    seen, exact = set(), 0
    for key in instructions:
        exact += key in seen
        seen.add(key)
    t0 = time.perf_counter()
    near = near_duplicates([i for i, _ in instructions], threshold, workers)
    timings["rouge_s"] = round(time.perf_counter() - t0, 2)

    chars = non_ascii = 0
    for r in records:
        for text in _texts(r):
            chars += len(text)
            if not text.isascii():
                non_ascii += sum(1 for c in text if ord(c) > 127)
    alpaca = [r for r in records if not is_conversation(r)]
    conversations = [r for r in records if is_conversation(r)]
    return {
        "records": len(records),
        "prompt_template": fmt.name,
        "with_input": sum(1 for r in alpaca if r.get("input", "") != ""),
        "conversations": len(conversations),
        "turns": _summary(np.asarray([turns_of(r) for r in conversations], np.int64)),
        "with_system": sum(1 for r in conversations if r["messages"][0]["role"] == "system"),
        "model_max_length": m,
        "tokens": {"prompt": _summary(prompt), "response": _summary(total - prompt), "total": _summary(total)},
        "tokens_in_loss": int(lengths["loss_within"][~fills].sum()),
        "prompt_fills_max_length": int(fills.sum()),
        "response_truncated": int(truncated.sum()),
        "boundary_merges": int(lengths["merges"]),
        "exact_duplicate_instructions": exact,
        "near_duplicate_instructions": near,
        "similarity_threshold": threshold,
        "empty_outputs": sum(1 for r in alpaca if not r["output"].strip()),
        "blank_instructions": sum(1 for r in alpaca if not r["instruction"].strip()),
        "non_ascii_share": round(non_ascii / chars, 6) if chars else 0.0,
        "timings": timings,
        "_lengths": {"prompt": prompt, "response": total - prompt, "total": total},
    }


def _labels(report: dict) -> Dict[str, str]:
    """What "prompt" and "response" mean in this report: under chat, the tokens outside and inside the loss."""
    if report["prompt_template"] == "chat":
        return {"prompt": "not in loss", "response": "in loss", "total": "total"}
    return {"prompt": "prompt", "response": "response", "total": "total"}


def format_report(report: dict) -> str:
    """The report as lines a person reads."""
    n = report["records"]
    pct = lambda k: f"{report[k]} ({100 * report[k] / max(1, n):.1f}%)"  # noqa: E731
    chat, labels = report["prompt_template"] == "chat", _labels(report)
    lines = [f"records: {n}, with input: {pct('with_input')}"]
    if report["conversations"]:
        t = report["turns"]
        lines.append(f"conversations: {pct('conversations')}; user and assistant turns each: mean {t['mean']:.1f}, "
                     f"p50 {t['p50']:.0f}, max {t['max']}; with a system turn of their own: {report['with_system']}")
    lines.append(f"tokens (model_max_length {report['model_max_length']}"
                 + (", the tokenizer's chat template):" if chat else "):"))
    width = max(len(v) for v in labels.values())
    for part in ("prompt", "response", "total"):
        s = report["tokens"][part]
        lines.append(f"  {labels[part]:<{width}} mean {s['mean']:7.1f}  "
                     + "  ".join(f"p{p} {s[f'p{p}']:6.0f}" for p in PERCENTILES) + f"  max {s['max']}")
    lines.append(f"tokens in the loss (within model_max_length, examples kept): {report['tokens_in_loss']}")
    if chat:
        lines += [
            f"no assistant token within model_max_length (dropped in training): {pct('prompt_fills_max_length')}",
            f"last assistant turn cut (its end-of-turn token lost): {pct('response_truncated')}",
            f"a token straddles the edge of an assistant turn: {pct('boundary_merges')}",
        ]
    else:
        lines += [
            f"prompt fills model_max_length (dropped in training): {pct('prompt_fills_max_length')}",
            f"response truncated (EOS lost; --drop_truncated_responses drops them): {pct('response_truncated')}",
            f"prompt/response boundary merged by the tokenizer: {pct('boundary_merges')}",
        ]
    lines += [
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
    chat = report["prompt_template"] == "chat"
    legend = {"prompt": "tokens outside the loss", "response": "tokens in the loss (the assistant's)",
              "total": "total tokens"} if chat else {part: f"{part} tokens" for part in ("prompt", "response", "total")}
    for part, color in (("prompt", "tab:blue"), ("response", "tab:orange"), ("total", "tab:gray")):
        ax.hist(lengths[part], bins=bins, histtype="step" if part == "total" else "stepfilled",
                alpha=0.9 if part == "total" else 0.55, color=color, linewidth=1.5, label=legend[part])
    ax.axvline(m, color="tab:red", linestyle="--", linewidth=1.2)
    cut, fill = ("last turns", "with no loss token before it") if chat else ("responses", "prompts fill it")
    ax.text(m, ax.get_ylim()[1] * 0.95, f" model_max_length {m}\n {report['response_truncated']} {cut} cut,\n"
            f" {report['prompt_fills_max_length']} {fill}", color="tab:red", va="top", fontsize=8)
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.set_title(f"Token lengths of {report['records']} records" + (f": {title}" if title else ""), fontsize=10)
    ax.legend(loc="upper right" if m < top * 0.6 else "upper left", fontsize=8)
    fig.tight_layout()
    with atomic_write(png_path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return [json_path, png_path]
