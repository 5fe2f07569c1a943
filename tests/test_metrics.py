"""alpaca_lib/evaluation/metrics.py: AlpacaEval's win rate and length-controlled win rate, from AlpacaEval's code.

    bash scripts/test.sh tests/test_metrics.py

The length-controlled fit is checked against what it claims to estimate (preferences drawn from a known
logistic model of the length difference), against its symmetry (swapping the two sides), and against
AlpacaEval's own `get_length_controlled_winrate` fed a synthetic `df_gamed.csv` planted in a Hugging Face
cache folder (AlpacaEval's real one is never needed, nor any text of it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alpaca_lib.evaluation.metrics import (
    LC_MINIMAL,
    LC_V1,
    alpaca_eval_metrics,
    annotation_frame,
    length_controlled,
    summarize,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn, on AlpacaEval's own calls


def plant_df_gamed(hub_cache, seed: int = 0, n: int = 805):
    """A synthetic df_gamed.csv (two gamed models' rows on `n` instructions, with their difficulties) where
    huggingface_hub looks for tatsu-lab/alpaca_eval's when offline. Returns the difficulties."""
    rng = np.random.default_rng(seed)
    repo = hub_cache / "datasets--tatsu-lab--alpaca_eval"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    difficulty = rng.normal(0, 1, n)
    frames = []
    for model, shift in (("gamed_long", 1.0), ("gamed_short", -1.0)):
        std_delta = rng.normal(shift, 1, n)
        frames.append(pd.DataFrame({
            "model": model, "index": np.arange(n), "instruction_difficulty": difficulty,
            "preference": 1 / (1 + np.exp(-(difficulty - np.tanh(std_delta)))), "std_delta_len": std_delta,
            "not_gamed_baseline": False}))
    pd.concat(frames).to_csv(snapshot / "df_gamed.csv", index=False)
    return difficulty


def rows_from_model(len_ref, len_model, preference, model="model", reference="ref") -> list[dict]:
    """Annotation rows in AlpacaEval's layout with outputs of the given lengths."""
    return [{"instruction": f"instruction {i}", "output_1": "r" * int(a), "generator_1": reference,
             "output_2": "m" * int(b), "generator_2": model, "annotator": "judge", "preference": p}
            for i, (a, b, p) in enumerate(zip(len_ref, len_model, preference))]


def _logistic_rows(n: int, theta: float, phi: float, seed: int = 0):
    """Preferences from p = sigmoid(theta + phi * tanh(std_delta_len)), std_delta_len AlpacaEval's
    (len(reference) - len(model)) / its std; the model is longer in most pairs."""
    rng = np.random.default_rng(seed)
    len_ref = rng.integers(100, 900, n)
    len_model = len_ref + rng.integers(-200, 600, n)
    delta = len_ref - len_model
    p = 1 / (1 + np.exp(-(theta + phi * np.tanh(delta / delta.std()))))
    return len_ref, len_model, p


def test_length_control_recovers_a_known_logistic_model():
    theta, phi = -0.8, -1.2  # the model is preferred when longer; at equal lengths it wins 31.0%
    len_ref, len_model, p = _logistic_rows(400, theta, phi)
    out = alpaca_eval_metrics(rows_from_model(len_ref, len_model, 1 + p), df_gamed=None)
    truth = 100 / (1 + np.exp(-theta))
    assert truth == pytest.approx(31.0026, abs=1e-4)
    assert out["win_rate"] == pytest.approx(100 * p.mean()) and out["win_rate"] > truth + 10  # length inflates it
    assert out["length_control"] == LC_MINIMAL
    assert out["length_controlled_winrate"] == pytest.approx(truth, abs=0.05)


def test_length_control_of_the_swapped_comparison_is_100_minus_it():
    len_ref, len_model, p = _logistic_rows(200, 0.3, -1.5, seed=1)
    rng = np.random.default_rng(2)
    preference = np.where(rng.random(200) < p, 2.0, 1.0)  # discrete verdicts, as a judge gives them
    preference[:10] = 1.5  # and some draws
    forward = length_controlled(annotation_frame(rows_from_model(len_ref, len_model, preference)), None)
    swapped = length_controlled(annotation_frame(
        rows_from_model(len_model, len_ref, 3 - preference, model="ref", reference="model")), None)
    assert 30 < forward["length_controlled_winrate"] < 90
    assert swapped["length_controlled_winrate"] == pytest.approx(100 - forward["length_controlled_winrate"], abs=1e-6)


def test_minimal_is_alpaca_evals_length_controlled_minimal(tmp_path, monkeypatch):
    """Our featurization for the minimal fit gives what AlpacaEval's own entry point gives (which needs
    df_gamed.csv even for this formula, hence the planted one)."""
    import alpaca_eval.constants
    from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

    plant_df_gamed(tmp_path / "hub")
    monkeypatch.setattr(alpaca_eval.constants, "DEFAULT_CACHE_DIR", str(tmp_path / "hub"))
    len_ref, len_model, p = _logistic_rows(120, -0.2, -1.0, seed=3)
    preference = list(1 + p)
    preference[5] = None  # unreadable: left out of the fit
    frame = annotation_frame(rows_from_model(len_ref, len_model, preference))
    ours = length_controlled(frame, None)
    theirs = get_length_controlled_winrate(frame.copy(), glm_name="length_controlled_minimal", save_weights_dir=None,
                                           is_warn_extreme_changes=False)
    assert ours["length_control"] == LC_MINIMAL
    assert ours["length_controlled_winrate"] == pytest.approx(theirs["length_controlled_winrate"], abs=1e-9)
    assert ours["lc_standard_error"] == pytest.approx(theirs["lc_standard_error"], abs=1e-9)


def test_v1_needs_df_gamed_and_805_pairs(tmp_path, monkeypatch):
    import alpaca_eval.constants
    from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

    len_ref, len_model, p = _logistic_rows(805, -0.5, -1.0, seed=4)
    rows = rows_from_model(len_ref, len_model, 1 + p)
    monkeypatch.setattr(alpaca_eval.constants, "DEFAULT_CACHE_DIR", str(tmp_path / "hub"))
    assert alpaca_eval_metrics(rows)["length_control"] == LC_MINIMAL  # no df_gamed.csv in the (empty) cache
    plant_df_gamed(tmp_path / "hub")
    out = alpaca_eval_metrics(rows)
    theirs = get_length_controlled_winrate(annotation_frame(rows), glm_name="length_controlled_v1",
                                           save_weights_dir=None, is_warn_extreme_changes=False)
    assert out["length_control"] == LC_V1
    assert out["length_controlled_winrate"] == pytest.approx(theirs["length_controlled_winrate"], abs=1e-9)
    assert out["lc_standard_error"] == pytest.approx(theirs["lc_standard_error"], abs=1e-9) and out["lc_standard_error"] > 0
    assert alpaca_eval_metrics(rows[:804])["length_control"] == LC_MINIMAL  # not AlpacaEval's set: no v1


def test_no_length_control_with_too_few_pairs_or_no_spread_of_lengths():
    assert alpaca_eval_metrics(rows_from_model([5] * 9, [9] * 9, [2.0] * 9))["length_control"] is None
    assert alpaca_eval_metrics(rows_from_model(range(10, 30), range(15, 35), [2.0, 1.0] * 10))["length_control"] is None
    # 10 readable pairs and differing length differences: a fit.
    assert alpaca_eval_metrics(rows_from_model(range(10), [5] * 10, [2.0, 1.0] * 5), df_gamed=None)["length_control"] \
        == LC_MINIMAL


def test_win_rate_and_counts_are_get_winrates():
    """Ties (1.5), unreadable pairs (None) and soft preferences, against AlpacaEval's definitions restated."""
    preference = [2.0, 2.0, 1.0, 1.5, None, 1.8, 1.2, 1.5]
    out = alpaca_eval_metrics(rows_from_model([10] * 8, [12, 30, 5, 9, 4, 8, 20, 10], preference))
    readable = np.array([p for p in preference if p is not None]) - 1
    assert out["win_rate"] == pytest.approx(100 * readable.mean())
    assert out["standard_error"] == pytest.approx(100 * readable.std(ddof=1) / np.sqrt(len(readable)))
    assert (out["n_wins"], out["n_wins_base"], out["n_draws"], out["n_total"]) == (3, 2, 2, 7)
    assert out["discrete_win_rate"] == pytest.approx(100 * (3 + 2 / 2) / 7)  # each rounded to win/draw/loss
    assert out["avg_length"] == int(np.mean([12, 30, 5, 9, 4, 8, 20, 10])) == 12
    assert out["length_control"] is None


def test_wins_ties_and_losses_add_up_to_the_pairs_under_letter_probabilities():
    """Weighted verdicts whose letters disagree across the orders but whose probabilities do not average 0.5
    count as AlpacaEval counts them (a win above 1.5, a loss below), so the three counts add up to n_pairs."""
    rows = rows_from_model([10] * 4, [12] * 4, [1.6, 1.5, 1.4, 1.9])
    for row, p_model in zip(rows, ([0.8, 0.4], [0.7, 0.3], [0.4, 0.4], [0.9, 0.9])):
        row.update(verdicts=["a" if p_model[0] >= 0.5 else "b", "b" if p_model[1] >= 0.5 else "a"],
                   model_won=[int(p >= 0.5) for p in p_model], p_model=p_model)
    out = summarize(rows)
    assert out["weighting"] == "logprobs"
    assert (out["n_wins"], out["n_ties"], out["n_losses"], out["n_pairs"]) == (2, 1, 1, 4)
    assert (out["n_ties"], out["n_losses"]) == (out["n_draws"], out["n_wins_base"])
    assert out["order_consistency"] == 0.5  # the first two pairs' letters disagree across the orders
