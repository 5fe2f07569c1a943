"""The fast ROUGE-L dedup gives rouge_score's exact scores and the original loop's decisions.

    .venv/bin/python -m pytest tests/test_generate_rouge.py -q
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from rapidfuzz.distance import LCSseq
from rouge_score import rouge_scorer, scoring

from alpaca_lib.core import rouge
from alpaca_lib.core.rouge import RougeLPool, rouge_tokenize, rouge_tokenize_chars
from conftest import REPO_ROOT, alpaca_records

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
WORDS = "the a of to write list give explain name short story poem two three summarize each sentence word".split()


def _reference_scores(candidate: str, pool: list[str]) -> np.ndarray:
    # The original: rouge_scorer._score_lcs(new_tokens, pool_tokens).fmeasure for each pool item.
    cand = SCORER._tokenizer.tokenize(candidate)
    return np.array([rouge_scorer._score_lcs(cand, SCORER._tokenizer.tokenize(p)).fmeasure for p in pool], dtype=np.float64)


def _fast_reference_scores(candidate: str, pool: list[str], tokenize=SCORER._tokenizer.tokenize) -> np.ndarray:
    """rouge_scorer._score_lcs's arithmetic (precision over the pool item, scoring.fmeasure) with the LCS
    length from rapidfuzz over the token lists instead of its Python table: the same floats, fast enough
    for pools of thousands. `test_fast_reference_is_rouge_score` checks it against _score_lcs itself."""
    cand = tokenize(candidate)
    out = []
    for tokens in map(tokenize, pool):
        if not cand or not tokens:
            out.append(0.0)
            continue
        lcs = LCSseq.similarity(cand, tokens)
        out.append(scoring.fmeasure(lcs / len(tokens), lcs / len(cand)))
    return np.array(out, dtype=np.float64)


def _reference_filter(pool: list[str], candidates: list[str], score=_reference_scores):
    """The original generator's per-candidate loop (stable tie order for the top 10)."""
    pool = list(pool)
    out = []
    for c in candidates:
        scores = score(c, pool)
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
    _assert_same_decisions(got, _reference_filter(pool, candidates))
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


def test_a_score_of_exactly_the_threshold_is_kept():
    """The original drops a candidate only when a score is > 0.7: two 10-token instructions sharing a 7-token
    subsequence score exactly 0.7 (precision and recall 7/10), and the candidate is kept."""
    base = "one two three four five six seven eight nine ten"
    at = "one two three four five six seven alpha beta gamma"  # 7 of 10 with base
    above = "one two three four five six seven eight delta epsilon"  # 8 of 10 with base
    again = "zeta eta theta one two three four five six seven"  # 7 of 10 with base and with `at`
    assert _reference_scores(at, [base]).tolist() == [0.7]
    assert _reference_scores(again, [base, at]).tolist() == [0.7, 0.7]
    pool = RougeLPool([base])
    d = pool.filter_batch([at, above, again])
    assert [x.kept for x in d] == [True, False, True]
    assert [x.max_score for x in d] == [0.7, float(_reference_scores(above, [base, at])[0]), 0.7]
    assert d[1].max_score > 0.7
    assert pool.texts == [base, at, again]
    assert d[2].most_similar_instructions == {base: 0.7, at: 0.7}


def test_empty_pool_keeps_with_zero_scores():
    d = RougeLPool([]).filter_batch(["Anything at all goes here."])
    assert d[0].kept and d[0].max_score == 0.0 and d[0].most_similar_instructions == {} and d[0].avg_similarity_score == 0.0


def test_real_seed_instructions_against_each_other():
    seeds = _seed_instructions()
    assert len(seeds) == 175
    p = RougeLPool(seeds[:100])
    for c in seeds[100:]:
        assert np.array_equal(p.scores(c), _reference_scores(c, seeds[:100]))


def _assert_same_decisions(got, ref):
    assert len(got) == len(ref)
    for g, (kept, max_score, top, avg) in zip(got, ref):
        assert g.kept == kept and g.max_score == max_score
        if kept:
            assert list(g.most_similar_instructions.items()) == list(top.items())
            assert g.avg_similarity_score == avg


def test_fast_reference_is_rouge_score():
    rng = random.Random(4)
    pool = _random_texts(rng, 100) + _real_texts()[:100]
    for c in _random_texts(rng, 10) + _real_texts()[200:210]:
        assert np.array_equal(_fast_reference_scores(c, pool), _reference_scores(c, pool)), c


def test_batches_against_a_pool_of_thousands_match_the_original_loop(monkeypatch):
    # 5,200 items: the top-10 search narrows each row to the scores reaching its sample's 10th (_top_k_floor);
    # short random texts over 19 words tie a lot. A small block makes each batch take several cdist blocks.
    monkeypatch.setattr(rouge, "_BLOCK_PAIRS", 7 * 5_300)
    rng = random.Random(5)
    real = _real_texts()
    pool = _random_texts(rng, 4_800) + real[:400]
    batches = []
    for b in range(2):
        batch = _random_texts(rng, 12) + real[400 + 8 * b : 408 + 8 * b]
        batch += [batch[2], batch[2] + " again", pool[-1] + " Explain briefly.", pool[100]]
        batches.append(batch)
    p = RougeLPool(pool, workers=2)
    reference_pool = list(pool)
    for batch in batches:
        got = p.filter_batch(batch)
        ref = _reference_filter(reference_pool, batch, _fast_reference_scores)
        _assert_same_decisions(got, ref)
        assert sum(not g.kept for g in got) >= 4 and sum(g.kept for g in got) >= 10
        # Ties at the 10th score are common here, so the order "later item first" is what is checked.
        tenth = [(c, min(g.most_similar_instructions.values())) for c, g in zip(batch, got) if g.kept][:6]
        assert sum((_fast_reference_scores(c, reference_pool) >= low).sum() > 10 for c, low in tenth) >= 3
        reference_pool += [c for c, g in zip(batch, got) if g.kept]
    assert p.texts == reference_pool


def test_chars_tokenizer_keeps_ascii_tokens_and_splits_other_letters():
    assert rouge_tokenize_chars("Write a POEM, then 3 more.") == rouge_tokenize("Write a POEM, then 3 more.")
    assert rouge_tokenize_chars("写一首关于秋天的诗。") == list("写一首关于秋天的诗")
    assert rouge_tokenize_chars("用Python写3个函数") == ["用", "python", "写", "3", "个", "函", "数"]
    assert rouge_tokenize_chars("Привет, мир_2") == list("привет") + list("мир") + ["2"]
    assert rouge_tokenize_chars("café naïve") == ["caf", "é", "na", "ï", "ve"]
    assert rouge_tokenize("写一首关于秋天的诗。") == []  # what rouge_score sees: nothing


class _CharTokenizer:
    def tokenize(self, text):
        return rouge_tokenize_chars(text)


def test_chars_tokenizer_scores_are_rouge_score_with_that_tokenizer():
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CharTokenizer())
    pool = ["写一首关于秋天的诗。", "写一首关于春天的诗。", "解释为什么天空是蓝色的。", "把这句话翻译成英文。",
            "Write a poem about autumn.", "用三句话总结这篇文章。", "列出五种常见的水果。"]
    candidates = ["写一首关于秋天的短诗。", "列出三种常见的蔬菜。", "Write a poem about the autumn.", "解释天空为什么是蓝色。"]
    p = RougeLPool(pool, tokenizer="chars")
    for c in candidates:
        # The original's call order: the new instruction is the target, the pool item the prediction.
        assert p.scores(c).tolist() == [scorer.score(c, x)["rougeL"].fmeasure for x in pool]
    words = RougeLPool(pool).filter_batch(candidates)
    chars = RougeLPool(pool, tokenizer="chars").filter_batch(candidates)
    # rouge_score's tokens see no Chinese: every Chinese candidate is kept with all-zero scores.
    assert [d.kept for d in words] == [True, True, False, True]
    assert words[0].max_score == 0.0 and set(words[0].most_similar_instructions.values()) == {0.0}
    # By character, near-copies of pool items are dropped (an LCS of 9 characters between 10 and 9, of 8
    # between 10 and 11), "list three common vegetables" is not (6 of 9 against "list five common fruits"),
    # and English decides as with words.
    assert [d.kept for d in chars] == [False, True, False, False]
    assert [d.max_score for d in chars] == [0.9473684210526316, 0.6666666666666666, 0.9090909090909091, 0.761904761904762]
    assert chars[2].max_score == words[2].max_score
    _assert_same_decisions(chars, _reference_filter(pool, candidates, lambda c, pl: _fast_reference_scores(c, pl, rouge_tokenize_chars)))


def test_unknown_tokenizer_is_refused():
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        RougeLPool([], tokenizer="bytes")
