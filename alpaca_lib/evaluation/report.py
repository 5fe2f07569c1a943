"""The judge's report for a person: report.md with the numbers and the clearest losses, and a PNG chart.

    python eval_model.py judge ... --output_dir runs/judge/demo_vs_base   # writes report.md, judge.png
    python eval_model.py score --annotations A.json --output_dir D        # the same from annotations
"""

from __future__ import annotations

import io
from typing import Sequence

from alpaca_lib.evaluation.leaderboard import display_name

CHART_NAME = "judge.png"
REPORT_NAME = "report.md"


def chart_png(leaderboard: Sequence[dict], len_model: Sequence[int], len_ref: Sequence[int],
              outputs_sha256: str, model: str, reference: str) -> bytes:
    """The chart, as PNG bytes: win rate with its standard error per leaderboard row (this run's, found by its
    outputs digest, in orange), and the two sides' output lengths."""
    import matplotlib  # deferred: 0.4 s to import, and only the chart needs it

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [f"{display_name(r, leaderboard)}\nvs {r['reference']}" for r in leaderboard]
    rates = [float(r["win_rate"] or 0) for r in leaderboard]
    errors = [float(r["standard_error"] or 0) for r in leaderboard]
    colors = ["tab:orange" if (r["outputs_sha256"], r["reference"]) == (outputs_sha256, reference) else "tab:blue"
              for r in leaderboard]
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
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return png.getvalue()


def _quote(text: str, limit: int = 400) -> str:
    text = text if len(text) <= limit else text[:limit] + " …"
    return "\n".join("> " + line for line in (text or "(empty)").splitlines() or ["(empty)"])


def headline(s: dict) -> str:
    """One line: the win rate, its error, the length-controlled rate (and which one) and the pairs."""
    lc = s["length_controlled_winrate"]
    lc_text = "" if lc is None else f", length-controlled {lc:.1f}% ({LC_NAMES[s['length_control']]})"
    return (f"win rate of {s['model']} vs {s['reference']}: {s['win_rate']:.1f}% ± {s['standard_error'] or 0:.1f}"
            f"{lc_text} ({s['n_pairs']} pairs, {s['weighting']})")


LC_NAMES = {"alpaca_eval_v1": "AlpacaEval 2's length_controlled_v1, comparable with its leaderboard",
            "minimal": "AlpacaEval's length_controlled_minimal: these pairs only, not the leaderboard's LC"}
WEIGHTINGS = {"logprobs": "the judge's probabilities of the two letters",
              "discrete": "its letters (1 win, 0.5 tie, 0 loss)",
              "preference": "the annotations' preferences as given"}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _formats_line(s: dict) -> list[str]:
    """How each side was prompted (`eval_model.py outputs --prompt_template`), when known: a line and a blank."""
    model, reference = s.get("prompt_template"), s.get("reference_prompt_template")
    if not (model or reference):
        return []
    return [f"Prompt formats: {s['model']} {model or 'not known'}, {s['reference']} {reference or 'not known'} "
            "(`eval_model.py outputs --prompt_template`).", ""]


def report_markdown(summary: dict, rows: Sequence[dict], pairing_note: str = "", n_lost: int = 3) -> str:
    """report.md's text: the headline numbers, how they were made, how far the judge can be trusted, and the
    pairs the model lost most clearly."""
    s = summary
    lc = s["length_controlled_winrate"]
    lines = [
        f"# {s['model']} vs {s['reference']}",
        "",
        f"Judge: `{s['judge_model']}`" + (f" (prompt `{s['prompt_version']}`), every pair judged in both orders"
                                          if s.get("prompt_version") else "")
        + f"; preferences weighted by {WEIGHTINGS[s['weighting']]}. Numbers by AlpacaEval's own code "
        "(`alpaca_eval.metrics`).",
        "",
        "| win rate | ± standard error | length-controlled | discrete win rate | pairs | wins | draws | losses | unreadable |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| **{s['win_rate']:.1f}%** | {s['standard_error'] or 0:.1f} | {'–' if lc is None else f'{lc:.1f}%'} | "
        f"{s['discrete_win_rate']:.1f}% | {s['n_pairs']} | {s['n_wins']} | {s['n_draws']} | {s['n_wins_base']} | "
        f"{s['n_unreadable']} |",
        "",
        "Length-controlled: " + (LC_NAMES[s["length_control"]] + "." if lc is not None
                                 else "none (fewer than 10 readable pairs, or no spread in the length differences)."),
        "",
        f"Average output length: {s['avg_length_model'] or 0:.0f} characters ({s['model']}) vs "
        f"{s['avg_length_reference'] or 0:.0f} ({s['reference']})."
        + ("" if not (s.get("usage") or {}).get("total_tokens") else f" Tokens: {s['usage']['total_tokens']:,}"
           + (f", about ${s['cost_usd']:.4f}." if s.get("cost_usd") is not None else ".")),
        "",
        *_formats_line(s),
        f"![win rates and output lengths]({CHART_NAME})",
        "",
        "## The judge",
        "",
        f"Same verdict in both orders: {_pct(s['order_consistency'])} of readable pairs. Named the output shown "
        f"first: {_pct(s['first_position_rate'])} of verdicts. Unreadable: {_pct(s['unreadable_rate'])} of pairs.",
        "",
    ]
    if s["judge_warnings"]:
        lines += ["**This judge is not reliable enough for the win rate to mean much:**", ""]
        lines += [f"- {w}" for w in s["judge_warnings"]] + [""]
    if pairing_note:
        lines += [f"Pairing: {pairing_note}.", ""]
    lost = sorted((r for r in rows if r["preference"] is not None and r["preference"] < 1.5),
                  key=lambda r: r["preference"])[:n_lost]
    if lost:
        lines += ["## Where the model lost most clearly", ""]
        for r in lost:
            lines += [f"### {r['instruction'][:120]}", ""]
            if r.get("input"):
                lines += ["Input:", _quote(r["input"]), ""]
            lines += [f"{s['model']}:", _quote(r["output_2"]), "", f"{s['reference']}:", _quote(r["output_1"]), ""]
    return "\n".join(lines)
