"""Reading a judge's reply: which of "Output (a)" and "Output (b)" it names as the better one.

    >>> read_verdict("A better answer is Output (b).")
    'b'

Judges asked for one letter often write a sentence instead. A reply is read when it names exactly one of
the two outputs, in the forms judges use:

- the letter alone, in any case and in full width too ("b", "B.", "Ｂ", "(b)", "**b**", "`a`");
- the letter marked as an output's name anywhere: "(b)", "**b**", "Output (b)", "Output B", "Response a",
  "Assistant b";
- the letter after a label: "Answer: b", "Verdict - A", "Final answer: (a)";
- the letter opening the reply before a verb or a stop ("b is better", "A.", "a: it is correct");
- the letter closing the reply after "is", "prefer", "choose" ("The better one is b.").

A reply that names both outputs ("Output (a) is fine but Output (b) is better") or neither is unreadable
(None): guessing would put a wrong verdict into the win rate. A leading article is not a verdict: in
"A better answer is Output (b)." only (b) is named.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Optional

LETTERS = ("a", "b")

_L = r"(?P<l>[ab])"
_BOLD = r"(?:\*\*|__|\*|`)?"
# Each pattern names one letter (group "l"); all are applied and their letters collected.
_PATTERNS = [
    # the whole reply is the letter, perhaps in brackets, bold or code, with punctuation around it
    re.compile(rf"^[\s\W_]*{_L}[\s\W_]*$"),
    # "(b)" / "[b]" anywhere
    re.compile(rf"[(\[]\s*{_BOLD}{_L}{_BOLD}\s*[)\]]"),
    # "**b**" / "__b__" / "`b`" anywhere
    re.compile(rf"(?:\*\*|__|`){_L}(?:\*\*|__|`)"),
    # "Output (b)", "output b", "Response B", "Assistant a" (a letter standing alone after the name)
    re.compile(rf"\b(?:output|response|assistant|option|candidate)\s*[#:]?\s*[(\[]?\s*{_BOLD}{_L}\b"),
    # "Answer: b", "Verdict - A", "Final answer: (a)", "Winner = b"
    re.compile(rf"\b(?:answer|verdict|choice|winner|preference|decision|result)\s*[:=\-–]\s*[(\[]?\s*{_BOLD}{_L}\b"),
    # the reply opens with the letter before a stop or a verb: "b is better", "A.", "a: ..."
    re.compile(rf"^[\s\W_]*{_L}{_BOLD}(?:\s*[.:)!,;\]]|\s+(?:is|wins|was|seems|looks)\b)"),
    # the reply closes with the letter after "is", "prefer", "choose", "pick": "The better one is b."
    re.compile(rf"\b(?:is|prefer|choose|pick|select)\s+[(\[]?\s*{_BOLD}{_L}{_BOLD}\s*[)\]]?[\s.!]*$"),
]


def named_letters(text: str) -> set[str]:
    """The letters a reply names as outputs (see the module docstring), lowercase."""
    norm = unicodedata.normalize("NFKC", text or "").strip().lower()  # full-width "Ｂ" -> "b"
    return {m.group("l") for p in _PATTERNS for m in p.finditer(norm)}


def read_verdict(text: str) -> Optional[str]:
    """The one output ("a" or "b") the reply names as the better, or None when it names both or neither."""
    named = named_letters(text)
    return named.pop() if len(named) == 1 else None
