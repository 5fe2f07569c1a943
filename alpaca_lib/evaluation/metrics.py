"""AlpacaEval's numbers, computed by AlpacaEval's own code on annotations in its layout.

    python eval_model.py score --annotations runs/judge/demo_vs_base/annotations.json --output_dir runs/judge/rescored

An annotation row is AlpacaEval's: `output_1` / `generator_1` is the reference (its "baseline"),
`output_2` / `generator_2` the model, `preference` in [1, 2] (2: the model is better, 1.5: a draw, null:
no readable verdict). `alpaca_eval_metrics` hands the rows to `alpaca_eval.metrics.get_winrate` (win rate,
standard error, wins, draws, discrete win rate: the leaderboard's columns) and to its length-controlled
win rate:

- `length_control == "alpaca_eval_v1"`: AlpacaEval 2's `length_controlled_v1`, the leaderboard's number.
  It needs AlpacaEval's `df_gamed.csv` (instruction difficulties and two gamed baselines, from the hub
  dataset `tatsu-lab/alpaca_eval`; offline, from the local Hugging Face cache) and exactly its 805
  evaluation instructions *in its order*: the difficulty of row i is looked up by position.
- `length_control == "minimal"`: otherwise, AlpacaEval's `length_controlled_minimal` (the same fit, with
  no difficulty term and no gamed baselines), fitted with AlpacaEval's own helpers. It removes what the
  length difference explains on these pairs only; it is not comparable with the leaderboard's LC.
- None (no length-controlled number) with fewer than `MIN_PAIRS_FOR_LC` readable pairs, or when every
  pair has the same length difference (then length explains nothing a fit could separate); except for a
  model scored against itself (one generator name on both sides, the same outputs), which AlpacaEval's own
  function gives 50, by construction, with no fit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from typing import Any, Optional, Sequence

import numpy as np
from huggingface_hub import hf_hub_download  # 0.2 s, but alpaca_eval, which every caller uses, imports it anyway

MIN_PAIRS_FOR_LC = 10  # AlpacaEval's fit cross-validates over 5 folds of pairs; fewer than 10 says little
V1_N_INSTRUCTIONS = 805  # AlpacaEval's evaluation set; length_controlled_v1 indexes its difficulties by position
LC_V1, LC_MINIMAL = "alpaca_eval_v1", "minimal"
GAMED_REPO, GAMED_FILE = "tatsu-lab/alpaca_eval", "df_gamed.csv"


@contextlib.contextmanager
def _quiet():
    """AlpacaEval's code logs its steps to the root logger and scikit-learn warns about future defaults:
    neither is news to a user of this project."""
    level = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(level)


def _alpaca_eval_metrics_module():
    """alpaca_eval.metrics and its glm_winrate module, imported quietly."""
    with _quiet():  # deferred: alpaca_eval takes over a second to import, and only the numbers need it
        import alpaca_eval.metrics as metrics
        import alpaca_eval.metrics.glm_winrate as glm
    return metrics, glm


def annotation_frame(rows: Sequence[dict]):
    """The rows as the DataFrame AlpacaEval's metrics take (positions 0..n-1, preference float or NaN)."""
    import pandas as pd  # deferred, as alpaca_eval (see `_alpaca_eval_metrics_module`)

    keys = ("instruction", "output_1", "generator_1", "output_2", "generator_2", "annotator", "preference")
    frame = pd.DataFrame([{k: r.get(k) for k in keys} for r in rows], columns=list(keys))
    frame["preference"] = frame["preference"].astype(float)
    return frame


def find_df_gamed() -> Optional[str]:
    """The path of AlpacaEval's df_gamed.csv (downloaded, or from the local Hugging Face cache when
    offline), or None when it cannot be had."""
    try:
        _, glm = _alpaca_eval_metrics_module()
        return hf_hub_download(repo_id=GAMED_REPO, filename=GAMED_FILE, repo_type="dataset",
                               cache_dir=glm.constants.DEFAULT_CACHE_DIR, token=glm.constants.DATASETS_TOKEN)
    except Exception:  # offline without it in the cache, no network, no access: the minimal LC is used
        return None


def _length_controlled_minimal(frame) -> tuple[float, float]:
    """AlpacaEval's `length_controlled_minimal` on these rows: its formula, design matrix and fit
    (`make_dmatrix_for_model`, `fit_LogisticRegressionCV`), without the df_gamed.csv download that its
    `get_length_controlled_winrate` always makes. The rows are featurized as its `_get_featurized_data`
    does: std_delta_len = (len(output_1) - len(output_2)) / its std, preference - 1 in [0, 1] (0 is a
    draw), every row a non-gamed one."""
    _, glm = _alpaca_eval_metrics_module()
    info = glm.GLM_INFO["length_controlled_minimal"]
    delta = frame["output_1"].str.len() - frame["output_2"].str.len()
    df = frame[["preference"]].copy()
    df["std_delta_len"] = delta / delta.std()
    df["preference"] = df["preference"].astype(float).replace({0.0: 1.5}) - 1
    df["not_gamed_baseline"] = True
    df_test = df[["not_gamed_baseline"]].copy()
    df_test["std_delta_len"] = 0
    train, test = glm.make_dmatrix_for_model(df, df_test, formula=info["formula"])
    train = train[train["preference"].notna()]
    model = glm.fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True, **info["kwargs"])
    predicted = model.predict_proba(test)[:, 1]
    import pandas as pd  # deferred, as in `annotation_frame`

    return float(predicted.mean() * 100), float(pd.Series(predicted).sem() * 100)


def length_controlled(frame, df_gamed: Optional[str] = "auto") -> dict[str, Any]:
    """AlpacaEval's length-controlled win rate of the rows, and which one it is (see the module docstring).

    Args:
        frame: `annotation_frame(rows)`.
        df_gamed: where df_gamed.csv is (AlpacaEval reads it again from the same cache), None for nowhere,
            or "auto" (`find_df_gamed`, asked only for 805 rows).
    Returns:
        {"length_controlled_winrate", "lc_standard_error", "length_control"} (all None when no LC is given).
    """
    with _quiet():
        return _length_controlled(frame, df_gamed)


def _against_itself(frame) -> bool:
    """Whether the rows compare a model with itself: one generator name on both sides (AlpacaEval's test, for
    which its `get_length_controlled_winrate` gives 50 by construction, without a fit) and the same outputs
    (two different models can share a name here, e.g. two `runs/*/final` folders)."""
    names = set(frame["generator_1"].unique()) | set(frame["generator_2"].unique())
    return len(names) == 1 and None not in names and frame["output_1"].equals(frame["output_2"])


def _length_controlled(frame, df_gamed: Optional[str]) -> dict[str, Any]:
    none = {"length_controlled_winrate": None, "lc_standard_error": None, "length_control": None}
    itself = _against_itself(frame)
    readable = frame["preference"].notna()
    delta = (frame["output_1"].str.len() - frame["output_2"].str.len())[readable]
    if not itself and (readable.sum() < MIN_PAIRS_FOR_LC or not delta.std() > 0):
        return none
    if len(frame) == V1_N_INSTRUCTIONS and df_gamed == "auto":
        df_gamed = find_df_gamed()
    v1 = len(frame) == V1_N_INSTRUCTIONS and df_gamed not in (None, "auto")
    if v1 or itself:
        _, glm = _alpaca_eval_metrics_module()
        out = glm.get_length_controlled_winrate(frame, glm_name="length_controlled_v1" if v1 else
                                                "length_controlled_minimal", save_weights_dir=None,
                                                is_add_glm_preference_inplace=False, is_warn_extreme_changes=False)
        return {"length_controlled_winrate": _number(out["length_controlled_winrate"]),
                "lc_standard_error": _number(out["lc_standard_error"]), "length_control": LC_V1 if v1 else LC_MINIMAL}
    lc, se = _length_controlled_minimal(frame)
    return {"length_controlled_winrate": lc, "lc_standard_error": se, "length_control": LC_MINIMAL}


def _number(x: Any) -> Any:
    """numpy scalars as plain Python numbers (for JSON); NaN as None."""
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(x) else float(x)
    return x


def alpaca_eval_metrics(rows: Sequence[dict], df_gamed: Optional[str] = "auto") -> dict[str, Any]:
    """AlpacaEval's leaderboard columns for annotation rows, from `alpaca_eval.metrics`.

    Args:
        rows: annotations in AlpacaEval's layout (see the module docstring).
        df_gamed: passed to `length_controlled`.
    Returns:
        win_rate, standard_error, n_wins, n_wins_base, n_draws, n_total, discrete_win_rate (get_winrate's),
        avg_length (the model's mean output length in characters, an int as on the leaderboard),
        length_controlled_winrate, lc_standard_error, length_control.
    """
    metrics, _ = _alpaca_eval_metrics_module()
    frame = annotation_frame(rows)
    with _quiet():
        out = {k: _number(v) for k, v in metrics.get_winrate(frame).items()}
    out["avg_length"] = int(frame["output_2"].str.len().mean()) if len(frame) else None
    out.update(length_controlled(frame, df_gamed))
    return out


# ---- the project's summary of a judged run: AlpacaEval's columns, its own counts, the judge's diagnostics ----

# A judge is called unreliable (in summary.json's `judge_warnings`, the report and scripts/loop.sh) when:
MIN_ORDER_CONSISTENCY = 0.6  # under 60% of pairs get the same verdict in both orders (a coin flip gives 50%)
MAX_POSITION_BIAS = 0.2  # it names the first-shown output in more than 70% (or under 30%) of its verdicts
MAX_UNREADABLE_RATE = 0.1  # more than 10% of pairs have no readable verdict (the rest may not be a fair sample)


def judge_diagnostics(rows: Sequence[dict]) -> dict[str, Optional[float]]:
    """How far the judge's verdicts can be trusted, from the rows' per-order verdicts.

    Returns:
        order_consistency: the share of readable pairs whose two verdicts name the same output (model or
            reference), None without per-order verdicts (annotations made elsewhere);
        first_position_rate: the share of readable verdicts (either order) that name the output shown first;
        unreadable_rate: the share of pairs with no readable verdict.
    """
    n = len(rows)
    unreadable = sum(r.get("preference") is None for r in rows)
    with_verdicts = [r for r in rows if r.get("verdicts")]
    letters = [v for r in with_verdicts for v in r["verdicts"] if v is not None]
    pairs = [r for r in with_verdicts if r.get("preference") is not None and None not in r["model_won"]]
    return {
        "order_consistency": sum(r["model_won"][0] == r["model_won"][1] for r in pairs) / len(pairs) if pairs else None,
        "first_position_rate": sum(v == "a" for v in letters) / len(letters) if letters else None,
        "unreadable_rate": unreadable / n if n else None,
    }


def judge_warnings(diagnostics: dict[str, Optional[float]]) -> list[str]:
    """Plain sentences for each diagnostic past its threshold (none when the judge looks usable)."""
    out = []
    c, f, u = diagnostics["order_consistency"], diagnostics["first_position_rate"], diagnostics["unreadable_rate"]
    if c is not None and c < MIN_ORDER_CONSISTENCY:
        out.append(f"the judge gave the same verdict in both orders for only {100 * c:.0f}% of pairs "
                   f"(under {100 * MIN_ORDER_CONSISTENCY:.0f}%; a coin flip gives 50%)")
    if f is not None and abs(f - 0.5) > MAX_POSITION_BIAS:
        out.append(f"the judge named the output shown first in {100 * f:.0f}% of its verdicts "
                   f"(outside {100 * (0.5 - MAX_POSITION_BIAS):.0f}-{100 * (0.5 + MAX_POSITION_BIAS):.0f}%): "
                   "it follows the position more than the content")
    if u is not None and u > MAX_UNREADABLE_RATE:
        out.append(f"{100 * u:.0f}% of pairs got no readable verdict (over {100 * MAX_UNREADABLE_RATE:.0f}%)")
    return out


def weighting_of(rows: Sequence[dict]) -> str:
    """How the rows' preferences were made: "logprobs" (the judge's probabilities), "discrete" (its
    letters: 1 win, 0.5 tie, 0 loss), or "preference" (annotations made elsewhere, taken as they are)."""
    readable = [r for r in rows if r.get("preference") is not None]
    if not readable or not all(r.get("verdicts") for r in readable):
        return "preference"
    return "logprobs" if all(p is not None for r in readable for p in r.get("p_model") or [None]) else "discrete"


def summarize(rows: Sequence[dict], df_gamed: Optional[str] = "auto") -> dict[str, Any]:
    """summary.json's numbers for annotation rows: AlpacaEval's (`alpaca_eval_metrics`), the project's
    counts and the judge's diagnostics.

    The project's keys: n_pairs (pairs with a readable verdict: AlpacaEval's n_total), n_unreadable,
    n_losses and n_ties (AlpacaEval's n_wins_base and n_draws: preference below, and at, 1.5, so that wins,
    ties and losses add up to n_pairs whatever the weighting; with discrete verdicts, the pairs the model
    lost in both orders and those whose two orders disagree), weighting (`weighting_of`),
    avg_length_model / avg_length_reference (characters, over readable pairs), and `judge_warnings`.
    """
    out = alpaca_eval_metrics(rows, df_gamed)
    readable = [r for r in rows if r.get("preference") is not None]
    diagnostics = judge_diagnostics(rows)
    out.update(
        n_pairs=len(readable), n_unreadable=len(rows) - len(readable), n_losses=out["n_wins_base"],
        n_ties=out["n_draws"],
        weighting=weighting_of(rows),
        avg_length_model=float(np.mean([len(r["output_2"]) for r in readable])) if readable else None,
        avg_length_reference=float(np.mean([len(r["output_1"]) for r in readable])) if readable else None,
        **diagnostics, judge_warnings=judge_warnings(diagnostics),
    )
    return out
