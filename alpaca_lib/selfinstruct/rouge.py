"""Exact ROUGE-L deduplication of new instructions against a growing pool, in C++ via rapidfuzz.

    python bench/bench_rouge.py          # time against pools of 5K and 50K instructions

The decisions and scores are those of `rouge_score` with `rougeL` and no stemmer, as the original
generator used them: tokens are lowercase runs of [a-z0-9]; the F-measure is the LCS length turned
into precision (over the pool item) and recall (over the candidate), combined with the same float
operations, so every score is bit-identical and the `> 0.7` rule decides the same way.

Speed: each distinct token becomes one Unicode code point, so an instruction becomes a short string
and rapidfuzz's bit-parallel LCS (`LCSseq.similarity` through `process.cdist`) compares a batch of
candidates with the whole pool at a few tens of nanoseconds a pair. No pair is skipped: every kept
item records the mean score over the whole pool (`avg_similarity_score`), which needs them all.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

# rouge_score's default tokenizer: lowercase, every run of non-[a-z0-9] becomes a space, split.
_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")
# Code points 0xD800-0xDFFF are surrogates and cannot stand alone in a str.
_SURROGATES_START, _SURROGATES_LEN = 0xD800, 0x800
_MAX_VOCAB = 0x110000 - _SURROGATES_LEN


def rouge_tokenize(text: str) -> list[str]:
    """Tokenizes exactly as rouge_score's DefaultTokenizer without a stemmer.

    Args:
        text: any text.
    Returns:
        The tokens (lowercase ASCII letters and digits).
    """
    return _NON_ALPHANUM.sub(" ", text.lower()).split()


def rouge_l_fmeasure(lcs: np.ndarray, cand_len: int, pool_lens: np.ndarray) -> np.ndarray:
    """ROUGE-L F-measures from LCS lengths, with rouge_score's float operations in its order.

    Args:
        lcs: LCS lengths, one per pool item.
        cand_len: the candidate's token count (rouge_score's "target").
        pool_lens: each pool item's token count (rouge_score's "prediction").
    Returns:
        float64 F-measures; 0 where either side has no tokens.
    """
    lcs = np.asarray(lcs, dtype=np.float64)
    pool_lens = np.asarray(pool_lens, dtype=np.float64)
    out = np.zeros(lcs.shape, dtype=np.float64)
    if cand_len == 0:
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs / pool_lens
        recall = lcs / np.float64(cand_len)
        fmeasure = 2 * precision * recall / (precision + recall)
    ok = (pool_lens > 0) & (precision + recall > 0)
    out[ok] = fmeasure[ok]
    return out


def top_k_desc(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first, ties broken by the later index first.

    The same as `np.argsort(scores, kind="stable")[-k:][::-1]` (the original's top-10 with a
    deterministic tie order), without sorting the whole array.
    """
    n = scores.shape[0]
    if n <= k:
        return np.argsort(scores, kind="stable")[::-1]
    threshold = np.partition(scores, n - k)[n - k]
    cand = np.flatnonzero(scores >= threshold)
    return cand[np.argsort(scores[cand], kind="stable")][::-1][:k]


@dataclass
class Decision:
    """What the dedup step decided for one candidate.

    kept: True when no score exceeded the threshold.
    max_score: the highest ROUGE-L F-measure against the pool (0.0 for an empty pool).
    most_similar_instructions: {instruction: score} for the top 10, highest first (kept items only).
    avg_similarity_score: the mean score over the whole pool (kept items only).
    """

    kept: bool
    max_score: float
    most_similar_instructions: dict[str, float] = field(default_factory=dict)
    avg_similarity_score: float = 0.0


class RougeLPool:
    """A pool of instructions that candidates are compared with; kept candidates join it.

    Args:
        instructions: the starting pool (seed instructions, then earlier kept ones), in order.
        workers: threads for rapidfuzz (the original's `num_cpus`); capped at the machine's cores.
    """

    def __init__(self, instructions: Iterable[str] = (), workers: int = 1):
        self.workers = max(1, min(int(workers), os.cpu_count() or 1))
        self.texts: list[str] = []
        self._codes: list[str] = []
        self._lens = np.zeros(0, dtype=np.int64)
        self._vocab: dict[str, str] = {}
        self.extend(instructions)

    def __len__(self) -> int:
        return len(self.texts)

    def _encode(self, tokens: Sequence[str]) -> str:
        # One code point per distinct token: LCS over these strings is LCS over the token lists.
        vocab = self._vocab
        chars = []
        for tok in tokens:
            ch = vocab.get(tok)
            if ch is None:
                n = len(vocab)
                if n >= _MAX_VOCAB:
                    raise RuntimeError(f"more than {_MAX_VOCAB} distinct tokens in the ROUGE pool")
                ch = chr(n if n < _SURROGATES_START else n + _SURROGATES_LEN)
                vocab[tok] = ch
            chars.append(ch)
        return "".join(chars)

    def extend(self, instructions: Iterable[str]) -> None:
        """Adds instructions to the pool without comparing them (e.g. the seed tasks)."""
        texts = list(instructions)
        codes = [self._encode(rouge_tokenize(t)) for t in texts]
        self.texts.extend(texts)
        self._codes.extend(codes)
        self._lens = np.concatenate([self._lens, np.fromiter((len(c) for c in codes), np.int64, len(codes))])

    def _lcs_matrix(self, queries: list[str], choices: list[str]) -> np.ndarray:
        from rapidfuzz import process
        from rapidfuzz.distance import LCSseq

        if not queries or not choices:
            return np.zeros((len(queries), len(choices)), dtype=np.int32)
        # Threads only pay off on large matrices; small ones run faster on one.
        workers = self.workers if len(queries) * len(choices) >= 200_000 else 1
        return process.cdist(queries, choices, scorer=LCSseq.similarity, dtype=np.int32, workers=workers)

    def scores(self, candidate: str) -> np.ndarray:
        """ROUGE-L F-measures of one candidate against every pool item, in pool order."""
        code = self._encode(rouge_tokenize(candidate))
        lcs = self._lcs_matrix([code], self._codes)[0]
        return rouge_l_fmeasure(lcs, len(code), self._lens)

    def filter_batch(self, candidates: Sequence[str], threshold: float = 0.7, top_k: int = 10) -> list[Decision]:
        """Decides each candidate in order, as the original loop did, and adds the kept ones.

        A candidate is compared with the pool and with the candidates kept before it in this batch;
        it is discarded when any score is > `threshold`.

        Args:
            candidates: instruction texts, in the order the original would visit them.
            threshold: the original's 0.7.
            top_k: how many most-similar instructions to record (the original's 10).
        Returns:
            One Decision per candidate.
        """
        codes = [self._encode(rouge_tokenize(c)) for c in candidates]
        cand_lens = np.fromiter((len(c) for c in codes), np.int64, len(codes))
        vs_pool = self._lcs_matrix(codes, self._codes)
        vs_batch = self._lcs_matrix(codes, codes)
        pool_n = len(self.texts)
        decisions: list[Decision] = []
        kept: list[int] = []
        for i, text in enumerate(candidates):
            lcs = np.concatenate([vs_pool[i], vs_batch[i, kept]]) if kept else vs_pool[i]
            lens = np.concatenate([self._lens, cand_lens[kept]]) if kept else self._lens
            f = rouge_l_fmeasure(lcs, int(cand_lens[i]), lens)
            max_score = float(f.max()) if f.size else 0.0
            if max_score > threshold:
                decisions.append(Decision(kept=False, max_score=max_score))
                continue
            names = self.texts if not kept else None
            most_similar = {}
            for j in top_k_desc(f, top_k):
                j = int(j)
                name = names[j] if names is not None else (self.texts[j] if j < pool_n else candidates[kept[j - pool_n]])
                most_similar[name] = float(f[j])
            avg = float(np.mean(f)) if f.size else 0.0
            decisions.append(Decision(True, max_score, most_similar, avg))
            kept.append(i)
        self.texts.extend(candidates[i] for i in kept)
        self._codes.extend(codes[i] for i in kept)
        self._lens = np.concatenate([self._lens, cand_lens[kept]])
        return decisions
