"""Exact ROUGE-L deduplication of new instructions against a growing pool, in C++ via rapidfuzz.

    python bench/bench_rouge.py          # time against pools of 5K and 50K instructions

The decisions and scores are those of `rouge_score` with `rougeL` and no stemmer, as the original
generator used them: tokens are lowercase runs of [a-z0-9]; the F-measure is the LCS length turned
into precision (over the pool item) and recall (over the candidate), combined with the same float
operations, so every score is bit-identical and the `> 0.7` rule decides the same way.

How it is fast (each distinct token becomes one code point; rapidfuzz's bit-parallel LCS compares a block of
candidates with the whole pool, and every pair is compared) and what it measures: docs/generation.md.

Other scripts: rouge_score keeps only [a-z0-9], so an instruction in Chinese (or Russian, Arabic, ...)
has no tokens and scores 0 against everything. `tokenizer="chars"` (`--rouge_tokenizer=chars`) keeps
those ASCII runs and makes every other letter or digit a token of its own: see `rouge_tokenize_chars`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

# rouge_score's default tokenizer: lowercase, every run of non-[a-z0-9] becomes a space, split.
_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")
# Code points 0xD800-0xDFFF are surrogates and cannot stand alone in a str.
_SURROGATES_START, _SURROGATES_LEN = 0xD800, 0x800
_MAX_VOCAB = 0x110000 - _SURROGATES_LEN
# ASCII letter/digit runs (rouge_score's tokens), or any other single letter or digit.
_CHAR_TOKEN = re.compile(r"[a-z0-9]+|[^\W_]")
# LCS lengths computed per cdist call (4 bytes each): bounds the memory a batch takes at any pool size.
_BLOCK_PAIRS = 1 << 22


def rouge_tokenize(text: str) -> list[str]:
    """Tokenizes exactly as rouge_score's DefaultTokenizer without a stemmer.

    Args:
        text: any text.
    Returns:
        The tokens (lowercase ASCII letters and digits).
    """
    return _NON_ALPHANUM.sub(" ", text.lower()).split()


def rouge_tokenize_chars(text: str) -> list[str]:
    """Character-level tokens for scripts that rouge_score drops: its ASCII tokens, plus one per other character.

    Lowercase runs of [a-z0-9] stay one token each, exactly as `rouge_tokenize` makes them, so text in
    ASCII letters scores and decides as with the default. Every other letter or digit (Chinese and
    Japanese characters, but also Cyrillic, Greek or accented Latin letters) is a token of its own;
    punctuation, spaces and marks separate tokens. For Chinese and Japanese, written without spaces,
    this is the usual character-level ROUGE-L. Words of alphabetic scripts are compared letter by
    letter, which scores unrelated sentences higher than a word-level comparison would.

    Args:
        text: any text.
    Returns:
        The tokens.
    """
    return _CHAR_TOKEN.findall(text.lower())


# The ROUGE-L tokenizers by name (GenerateConfig.rouge_tokenizer).
TOKENIZERS = {"words": rouge_tokenize, "chars": rouge_tokenize_chars}


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


def _code_point(i: int) -> str:
    """The i-th usable code point (surrogates cannot stand alone in a str)."""
    return chr(i if i < _SURROGATES_START else i + _SURROGATES_LEN)


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
        tokenizer: "words" (rouge_score's, the original's) or "chars" (see `rouge_tokenize_chars`).
    """

    def __init__(self, instructions: Iterable[str] = (), workers: int = 1, tokenizer: str = "words"):
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {sorted(TOKENIZERS)}; got {tokenizer!r}")
        self.workers = max(1, min(int(workers), os.cpu_count() or 1))
        self.tokenize = TOKENIZERS[tokenizer]
        self.texts: list[str] = []
        self._codes: list[str] = []
        self._lens = np.zeros(0, dtype=np.intp)
        self._vocab: dict[str, str] = {}
        # F-measure tables by candidate length (see _table); valid while no text is longer than _width - 1.
        self._tables: dict[int, np.ndarray] = {}
        self._width = 1
        self._recoded_at = 0  # pool size when the codes were last ordered by frequency
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
                ch = vocab[tok] = _code_point(n)
            chars.append(ch)
        return "".join(chars)

    def extend(self, instructions: Iterable[str]) -> None:
        """Adds instructions to the pool without comparing them (e.g. the seed tasks)."""
        texts = list(instructions)
        self._append(texts, [self._encode(self.tokenize(t)) for t in texts])

    def _append(self, texts: list[str], codes: list[str]) -> None:
        lens = np.fromiter(map(len, codes), np.intp, len(codes))
        self.texts.extend(texts)
        self._codes.extend(codes)
        self._lens = np.concatenate([self._lens, lens])
        self._widen(lens)
        if len(self._codes) >= 2 * self._recoded_at + 256:
            self._recode()

    def _recode(self) -> None:
        """Gives the most frequent tokens the lowest code points; done each time the pool has doubled.

        rapidfuzz looks characters below 256 up in an array and the others in a hash map, so the LCS
        runs faster when most of them are low; which code a token has changes no LCS length.
        """
        counts = Counter(ch for code in self._codes for ch in code)
        by_frequency = sorted(self._vocab.values(), key=lambda ch: -counts[ch])
        new = {old: _code_point(i) for i, old in enumerate(by_frequency)}
        table = {ord(old): ch for old, ch in new.items()}
        self._codes = [code.translate(table) for code in self._codes]
        self._vocab = {tok: new[ch] for tok, ch in self._vocab.items()}
        self._recoded_at = len(self._codes)

    def _widen(self, lens: np.ndarray) -> None:
        width = int(lens.max(initial=0)) + 1
        if width > self._width:
            self._width = width
            self._tables.clear()

    def _table(self, cand_len: int) -> np.ndarray:
        """Every F-measure a candidate of `cand_len` tokens can score: entry `p * (cand_len + 1) + l` is the
        one for an LCS of l tokens with an item of p tokens, computed by `rouge_l_fmeasure` itself.

        A score depends only on those three integers, so looking it up gives the same float64 bits as
        computing it for each pair, without float arithmetic over the whole pool per candidate.
        """
        table = self._tables.get(cand_len)
        if table is None:
            lcs = np.tile(np.arange(cand_len + 1), self._width)
            item_lens = np.repeat(np.arange(self._width), cand_len + 1)
            table = self._tables[cand_len] = rouge_l_fmeasure(lcs, cand_len, item_lens)
        return table

    def _lcs_matrix(self, queries: list[str], choices: list[str], dtype: type = np.intp) -> np.ndarray:
        # rapidfuzz only when a pool is compared: importing the generator's modules (and --help) skips it
        from rapidfuzz import process
        from rapidfuzz.distance import LCSseq

        if not queries or not choices:
            return np.zeros((len(queries), len(choices)), dtype=dtype)
        # Threads only pay off on large matrices; small ones run faster on one.
        workers = self.workers if len(queries) * len(choices) >= 200_000 else 1
        return process.cdist(queries, choices, scorer=LCSseq.similarity, dtype=dtype, workers=workers)

    def scores(self, candidate: str) -> np.ndarray:
        """ROUGE-L F-measures of one candidate against every pool item, in pool order."""
        code = self._encode(self.tokenize(candidate))
        self._widen(np.array([len(code)]))
        lcs = self._lcs_matrix([code], self._codes)[0]
        return self._table(len(code))[self._lens * (len(code) + 1) + lcs]

    def filter_batch(self, candidates: Sequence[str], threshold: float = 0.7, top_k: int = 10) -> list[Decision]:
        """Decides each candidate in order, as the original loop did, and adds the kept ones.

        A candidate is compared with the pool and with the candidates kept before it in this batch;
        it is discarded when any score is > `threshold`.

        The LCS lengths of a block of candidates against the whole pool come from one `cdist` call.
        Each candidate's scores are then looked up in its length's table (`_table`) into one reused
        buffer, laid out as the original's list (the pool in order, then the candidates kept before
        it), so the maximum and the mean are taken over the same floats in the same order; the top k
        are searched for only among the scores that reach a floor (`_top_k_floor`).

        Args:
            candidates: instruction texts, in the order the original would visit them.
            threshold: the original's 0.7.
            top_k: how many most-similar instructions to record (the original's 10).
        Returns:
            One Decision per candidate.
        """
        codes = [self._encode(self.tokenize(c)) for c in candidates]
        n, pool_n = len(codes), len(self._codes)
        cand_lens = np.fromiter(map(len, codes), np.intp, n)
        self._widen(cand_lens)
        itype = np.int32 if self._width**2 <= np.iinfo(np.int32).max else np.intp  # table indices fit
        pool_lens = self._lens.astype(itype)
        # Table index of each (candidate, other candidate) pair, for the candidates kept before each.
        vs_batch = self._lcs_matrix(codes, codes) + cand_lens[None, :] * (cand_lens[:, None] + 1)
        offsets: dict[int, np.ndarray] = {}  # candidate length c -> pool lengths * (c + 1)
        row = np.empty(pool_n + n, dtype=np.float64)  # one candidate's scores, in the original's order
        kept = np.empty(n, dtype=np.intp)
        n_kept = 0
        decisions: list[Decision] = []
        block = max(1, _BLOCK_PAIRS // max(pool_n, 1))
        for start in range(0, n, block):
            vs_pool = self._lcs_matrix(codes[start : start + block], self._codes, itype)
            for i, index in enumerate(vs_pool, start):
                c = int(cand_lens[i])
                table = self._table(c)
                if c not in offsets:
                    offsets[c] = pool_lens * itype(c + 1)
                index += offsets[c]  # the LCS lengths become table indices
                np.take(table, index, out=row[:pool_n], mode="clip")
                n_all = pool_n + n_kept
                row[pool_n:n_all] = table[vs_batch[i, kept[:n_kept]]]
                f = row[:n_all]
                max_score = float(f.max()) if n_all else 0.0
                if max_score > threshold:
                    decisions.append(Decision(kept=False, max_score=max_score))
                    continue
                # The top k: the highest scores, ties to the later item, among those that can be in it.
                near = np.flatnonzero(f >= _top_k_floor(f, top_k))
                top = near[np.lexsort((near, f[near]))[::-1][:top_k]]
                most_similar = {}
                for j in top.tolist():
                    most_similar[self.texts[j] if j < pool_n else candidates[kept[j - pool_n]]] = float(f[j])
                avg = float(np.mean(f)) if n_all else 0.0
                decisions.append(Decision(True, max_score, most_similar, avg))
                kept[n_kept] = i
                n_kept += 1
        kept_list = kept[:n_kept].tolist()
        self._append([candidates[i] for i in kept_list], [codes[i] for i in kept_list])
        return decisions


def _top_k_floor(scores: np.ndarray, k: int) -> float:
    """A value that at least k of the scores reach (or -inf when there are k or fewer): the k-th highest
    of an evenly spaced sample of them (of all of them when few), so all of the top k reach it too.
    """
    n = scores.shape[0]
    if n <= k:
        return -np.inf
    sample = scores[:: max(1, n // (128 * k))]
    return np.partition(sample, sample.size - k)[sample.size - k]
