"""A reference-based score: ROUGE-L of each output against the eval set's reference output.

    python eval_model.py score --model_outputs runs/demo/model_outputs.json --references heldout.json \
        --output_dir runs/judge/demo_rouge

Self-Instruct scored SuperNI this way: the ROUGE-L F-measure of a model's answer against the reference
answer, as `rouge_score` computes it with `rougeL` and no stemmer, averaged over the records. It needs no
judge, so it means the same thing offline and with a tiny model, where a judge's win rate means little.
The tokenizer and the F-measure are the project's fast ROUGE-L (alpaca_lib/core/rouge.py); the LCS is
rapidfuzz's, over tokens turned into code points.

rouge_score keeps only the ASCII letters and digits, so a Chinese answer scores 0 against a Chinese reference,
however alike they are. When any record has a letter or digit it would drop (`beyond_ascii`), the score
tokenizes by characters instead (`tokenizer="chars"`, `rouge_tokenize_chars`, as the generator's
`--rouge_tokenizer chars`): ASCII words stay one token each, so a record written in ASCII scores exactly as
with rouge_score, and every other letter or digit is a token of its own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from rapidfuzz.distance import LCSseq

from alpaca_lib.core.rouge import TOKENIZERS, _code_point, rouge_l_fmeasure, rouge_tokenize, rouge_tokenize_chars


def beyond_ascii(text: str) -> bool:
    """Whether `text` has a letter or digit that rouge_score's tokenizer drops (Chinese, Cyrillic, an accent...)."""
    return rouge_tokenize_chars(text) != rouge_tokenize(text)


def rouge_l(outputs: Sequence[str], references: Sequence[str], tokenizer: str = "words") -> list[float]:
    """ROUGE-L F-measure of each output against its reference (rouge_score's `rougeL`, no stemmer).

    Args:
        outputs: the model's answers.
        references: the reference answers, one per output.
        tokenizer: "words" (rouge_score's) or "chars" (`rouge_tokenize_chars`; the same on ASCII text).
    Returns:
        One F-measure per pair, in [0, 1] (0 when either side has no tokens).
    """
    tokenize = TOKENIZERS[tokenizer]
    vocab: dict[str, str] = {}

    def encode(tokens: list[str]) -> str:
        return "".join(vocab.setdefault(t, _code_point(len(vocab))) for t in tokens)

    scores = []
    for output, reference in zip(outputs, references, strict=True):
        ref_tokens, out_tokens = tokenize(reference), tokenize(output)
        lcs = LCSseq.similarity(encode(ref_tokens), encode(out_tokens))
        # rouge_score's scorer.score(target=reference, prediction=output): recall over the reference.
        scores.append(float(rouge_l_fmeasure(np.array([lcs]), len(ref_tokens), np.array([len(out_tokens)]))[0]))
    return scores
