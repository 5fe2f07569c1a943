"""The judge's report for a person: report.md with the numbers and the clearest losses, and a PNG chart.

    python eval_model.py judge ... --output_dir runs/judge/demo_vs_base   # writes report.md, judge.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from alpaca_lib.fileio import atomic_write

CHART_NAME = "judge.png"
REPORT_NAME = "report.md"


def draw_chart(path: Path, leaderboard: Sequence[dict], len_model: Sequence[int], len_ref: Sequence[int],
               model: str, reference: str) -> None:
    """Win rate with its standard error per leaderboard row, and the two sides' output lengths."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [f"{r['model']}\nvs {r['reference']}" for r in leaderboard]
    rates = [float(r["win_rate"] or 0) for r in leaderboard]
    errors = [float(r["standard_error"] or 0) for r in leaderboard]
    colors = ["tab:orange" if (r["model"], r["reference"]) == (model, reference) else "tab:blue" for r in leaderboard]
    ax1.barh(range(len(names)), rates, xerr=errors, color=colors, capsize=4, height=0.5)
    ax1.axvline(50, color="grey", linestyle="--", linewidth=1)
    ax1.set_yticks(range(len(names)), names, fontsize=8)
    ax1.set_ylim(len(names) - 0.5, -0.5) if len(names) > 1 else ax1.set_ylim(-1, 1)
    ax1.set_xlim(0, 100)
    ax1.set_xlabel("win rate (%), ± standard error")
    ax1.set_title("Leaderboard (this run in orange)")
    bins = 20
    top = max([*len_model, *len_ref, 1])
    ax2.hist(len_ref, bins=bins, range=(0, top), alpha=0.6, label=f"{reference} (reference)")
    ax2.hist(len_model, bins=bins, range=(0, top), alpha=0.6, label=f"{model} (model)")
    ax2.set_xlabel("output length (characters)")
    ax2.set_ylabel("outputs")
    ax2.set_title("Output lengths")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def _quote(text: str, limit: int = 400) -> str:
    text = text if len(text) <= limit else text[:limit] + " …"
    return "\n".join("> " + line for line in (text or "(empty)").splitlines() or ["(empty)"])


def write_report(output_dir: Path, summary: dict, verdicts: Sequence[dict], pairing_note: str, n_lost: int = 3) -> None:
    """report.md: the headline numbers, how they were made, and the pairs the model lost most clearly."""
    s = summary
    lc = s["length_controlled_win_rate"]
    lines = [
        f"# {s['model']} vs {s['reference']}",
        "",
        f"Judge: `{s['judge_model']}` (prompt `{s['prompt_version']}`), every pair judged in both orders; "
        f"preferences weighted by {'the judge' + chr(39) + 's log probabilities' if s['weighting'] == 'logprobs' else 'its letters (1 win, 0.5 tie, 0 loss)'}.",
        "",
        "| win rate | ± standard error | length-controlled | pairs | wins | ties | losses | unreadable |",
        "|---|---|---|---|---|---|---|---|",
        f"| **{s['win_rate']:.1f}%** | {s['standard_error'] or 0:.1f} | {'–' if lc is None else f'{lc:.1f}%'} | "
        f"{s['n_pairs']} | {s['n_wins']} | {s['n_ties']} | {s['n_losses']} | {s['n_unreadable']} |",
        "",
        f"Average output length: {s['avg_length_model']:.0f} characters ({s['model']}) vs "
        f"{s['avg_length_reference']:.0f} ({s['reference']}). Tokens: {s['usage']['total_tokens']:,}"
        + (f", about ${s['cost_usd']:.4f}." if s.get("cost_usd") is not None else "."),
        "",
        f"![win rates and output lengths]({CHART_NAME})",
        "",
    ]
    if pairing_note:
        lines += [f"Pairing: {pairing_note}.", ""]
    lost = sorted((v for v in verdicts if sum(v["model_won"]) == 0),
                  key=lambda v: sum(p for p in v["p_model"] if p is not None))[:n_lost]
    if lost:
        lines += ["## Where the model lost most clearly", ""]
        for v in lost:
            lines += [f"### {v['instruction'][:120]}", ""]
            if v["input"]:
                lines += ["Input:", _quote(v["input"]), ""]
            lines += [f"{s['model']}:", _quote(v["output_model"]), "", f"{s['reference']}:",
                      _quote(v["output_reference"]), ""]
    with atomic_write(output_dir / REPORT_NAME) as f:
        f.write("\n".join(lines))
