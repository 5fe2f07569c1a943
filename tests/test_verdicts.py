"""alpaca_lib/evaluation/verdicts.py: replies as judges write them, read as the output they name (or as unreadable).

    bash scripts/test.sh tests/test_verdicts.py
"""

from __future__ import annotations

import pytest

from alpaca_lib.evaluation.verdicts import read_verdict

REPLIES = [
    # a bare letter, any case, full width, bracketed, marked up
    ("a", "a"),
    ("B", "b"),
    (" b\n", "b"),
    ("A.", "a"),
    ("Ｂ", "b"),
    ("ａ", "a"),
    ("(b)", "b"),
    ("（Ａ）", "a"),
    ("**b**", "b"),
    ("`a`", "a"),
    ("[[B]]", "b"),
    ("b)", "b"),
    # the letter as an output's name
    ("Output (b)", "b"),
    ("Output a.", "a"),
    ("**Output (A)**", "a"),
    ("Output B is better.", "b"),
    ("Response (a) follows the request more closely.", "a"),
    ("Assistant B's answer is more complete.", "b"),
    # after a label
    ("Answer: b", "b"),
    ("Final answer: (a)", "a"),
    ("Verdict - B", "b"),
    # in a sentence
    ("The better output is (b).", "b"),
    ("A better answer is Output (b).", "b"),  # "A" is an article here
    ("A good response would list the steps; Output (a) does.", "a"),
    ("b is better", "b"),
    ("A is better because it is correct.", "a"),
    ("a: it answers the question.", "a"),
    ("The better one is b.", "b"),
    ("I prefer (a) for its accuracy.", "a"),
    ("After comparing both, I choose B.", "b"),
    ("Output (a) is a better response.", "a"),
    ("Between the two, **b** is more helpful.", "b"),
    # both or neither: unreadable
    ("Output (a) is fine, but Output (b) is better.", None),
    ("Output (b) is better than Output (a).", None),
    ("Both outputs are equally good.", None),
    ("I cannot decide between them.", None),
    ("It's a tie.", None),
    ("a and b are equal", None),
    ("ab", None),
    ("neither", None),
    ("", None),
]


@pytest.mark.parametrize("reply,expected", REPLIES, ids=[repr(r)[:40] for r, _ in REPLIES])
def test_reading_a_reply(reply, expected):
    assert read_verdict(reply) == expected


def test_the_table_is_large_enough():
    assert len(REPLIES) >= 30 and {e for _, e in REPLIES} == {"a", "b", None}
