"""The fast ROUGE-L dedup gives rouge_score's exact scores and the original loop's decisions.

    .venv/bin/python -m pytest tests/test_generate_rouge.py -q
"""

from __future__ import annotations

import json
import random

import numpy as np
from rouge_score import rouge_scorer

from conftest import REPO_ROOT, alpaca_records

from alpaca_lib.selfinstruct.rouge import RougeLPool, rouge_tokenize, top_k_desc

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
WORDS = "the a of to write list give explain name short story poem two three summarize each sentence word".split()


def _reference_scores(candidate: str, pool: list[str]) -> np.ndarray:
    # The original: rouge_scorer._score_lcs(new_tokens, pool_tokens).fmeasure for each pool item.
    cand = SCORER._tokenizer.tokenize(candidate)
    return np.array([rouge_scorer._score_lcs(cand, SCORER._tokenizer.tokenize(p)).fmeasure for p in pool], dtype=np.float64)


def _reference_filter(pool: list[str], candidates: list[str]):
    """The original generator's per-candidate loop (stable tie order for the top 10)."""
    pool = list(pool)
    out = []
    for c in candidates:
        scores = _reference_scores(c, pool)
        if scores.max() > 0.7:
            out.append((False, float(scores.max()), None, None))
            continue
        top = {pool[i]: float(scores[i]) for i in np.argsort(scores, kind="stable")[-10:][::-1]}
        out.append((True, float(scores.max()), top, float(np.mean(scores))))
        pool.append(c)
    return out


def _random_texts(rng: random.Random, n: int) -> list[str]:
    texts = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(0, 12))]
        sep = rng.choice([" ", "  ", ", ", "-", "\n"])
        texts.append(sep.join(w.upper() if rng.random() < 0.2 else w for w in words) + rng.choice(["", ".", "?", "!"]))
    return texts


def _seed_instructions() -> list[str]:
    """The 175 instructions of the shipped seed_tasks.jsonl."""
    with open(REPO_ROOT / "seed_tasks.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["instruction"] for line in f if line.strip()]


def _real_texts() -> list[str]:
    """Real instructions, all shipped with the repo: alpaca_data.json's, then seed_tasks.jsonl's (429 in all)."""
    return [r["instruction"] for r in alpaca_records()] + _seed_instructions()


def test_tokenizer_matches_rouge_score():
    cases = [
        "Hello, World!", "İstanbul ÇAY", "naïve café", "e-mail 3.14 x_y", "ÀÉÎ straße ǅ", "", "   ", "tab\tnew\nline",
        "ＦＵＬＬ width", "K (kelvin)", "a/b\\c", "don't stop", "ĳ ŉ ﬁ", "123abc ABC123",
    ]
    rng = random.Random(0)
    cases += ["".join(chr(rng.randint(32, 0x2FFF)) for _ in range(30)) for _ in range(500)]
    for text in cases:
        assert rouge_tokenize(text) == SCORER._tokenizer.tokenize(text), repr(text)


def test_scores_are_bit_identical_on_thousands_of_pairs():
    rng = random.Random(1)
    pool = _random_texts(rng, 150) + _real_texts()[:150]
    candidates = _random_texts(rng, 20) + _real_texts()[150:170] + [pool[0], pool[-1], "", "..."]
    # Near-copies of real pool items land on both sides of the 0.7 line whatever the data source.
    candidates += [pool[150 + i] + " Explain briefly." for i in range(0, 20, 2)]
    candidates += [" ".join(pool[150 + i].split()[2:]) for i in range(1, 20, 2)]
    p = RougeLPool(pool)
    pairs = 0
    for c in candidates:
        got = p.scores(c)
        ref = _reference_scores(c, pool)
        assert np.array_equal(got, ref), c
        pairs += len(pool)
    assert pairs >= 10_000
    # Random short texts overlap a lot, so both sides of the 0.7 line are exercised.
    all_scores = np.concatenate([p.scores(c) for c in candidates])
    assert (all_scores > 0.7).sum() > 10 and ((all_scores > 0.5) & (all_scores <= 0.7)).sum() > 10


def test_filter_batch_matches_the_original_loop_including_within_batch_order():
    rng = random.Random(2)
    pool = _random_texts(rng, 80) + _real_texts()[:80]
    candidates = _random_texts(rng, 60)
    # A near-copy of an earlier candidate in the same batch is judged against it.
    candidates += [candidates[3], candidates[3] + " again", "brand new words entirely unusual zebra"]
    got = RougeLPool(pool, workers=2).filter_batch(candidates)
    ref = _reference_filter(pool, candidates)
    assert len(got) == len(ref)
    for g, (kept, max_score, top, avg) in zip(got, ref):
        assert g.kept == kept and g.max_score == max_score
        if kept:
            assert list(g.most_similar_instructions.items()) == list(top.items())
            assert g.avg_similarity_score == avg
    assert sum(not g.kept for g in got) >= 5 and sum(g.kept for g in got) >= 5


def test_sequential_semantics_and_pool_growth():
    pool = RougeLPool(["Write a haiku about the sea."])
    d = pool.filter_batch(
        [
            "List three facts about the moon.",  # kept
            "List three facts about the moon!",  # same tokens as the kept one: 1.0 > 0.7
            "Write a haiku about the sea.",  # copy of the pool: dropped
            "Name two rivers in Africa today.",  # kept
        ]
    )
    assert [x.kept for x in d] == [True, False, False, True]
    assert [x.max_score for x in d[1:3]] == [1.0, 1.0]
    assert pool.texts == ["Write a haiku about the sea.", "List three facts about the moon.", "Name two rivers in Africa today."]
    # The last candidate was compared with the seed and the first kept candidate.
    assert list(d[3].most_similar_instructions) == ["List three facts about the moon.", "Write a haiku about the sea."]
    # The next batch sees everything kept before.
    assert pool.filter_batch(["name two rivers in africa today"])[0].kept is False


def test_top_k_matches_stable_argsort_with_ties():
    rng = np.random.default_rng(3)
    for n in (1, 5, 10, 11, 50, 1000):
        scores = rng.integers(0, 4, size=n) / 4.0  # many ties
        assert top_k_desc(scores, 10).tolist() == np.argsort(scores, kind="stable")[-10:][::-1].tolist()


def test_empty_pool_keeps_with_zero_scores():
    d = RougeLPool([]).filter_batch(["Anything at all goes here."])
    assert d[0].kept and d[0].max_score == 0.0 and d[0].most_similar_instructions == {} and d[0].avg_similarity_score == 0.0


def test_real_seed_instructions_against_each_other():
    seeds = _seed_instructions()
    assert len(seeds) == 175
    p = RougeLPool(seeds[:100])
    for c in seeds[100:]:
        assert np.array_equal(p.scores(c), _reference_scores(c, seeds[:100]))
