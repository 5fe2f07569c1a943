"""Two output files paired record by record, for the judge and for ROUGE-L against references.

    from alpaca_lib.evaluation.pairing import load_outputs, pair_records
    pairing = pair_records(load_outputs("m.json", "--model_outputs"), load_outputs("r.json", "--reference_outputs"))
    pairing.pairs      # [(model record, reference record)], in the model file's order
    pairing.report()   # what was left out, in one line ("" when nothing was)

Records are matched by their request: the instruction, then the input after a blank line when a record has
one (`alpaca_lib.core.prompt.request_text`, AlpacaEval's form), so a file that keeps the input apart pairs
with one that does not. A request found in one file only, or more than once in a file, is left out and
reported; nothing is matched by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from alpaca_lib.core.prompt import request_text
from alpaca_lib.data.json_reader import load_records

OUTPUT_FIELDS = dict(required=("instruction", "output"), optional=("input", "dataset", "generator"))


def load_outputs(path: str, flag: str) -> list[dict]:
    """Model outputs in AlpacaEval's format (or Alpaca JSON / JSON Lines with an `output`).

    Raises:
        DataError: the file, the record (and line) and what is wrong, naming `flag`.
    """
    return load_records(path, flag=flag, **OUTPUT_FIELDS)


def name_of(records: list, path: str) -> str:
    """A side's name: its records' `generator`, else its file's name."""
    return records[0].get("generator") or Path(path).stem


def pair_key(record: dict) -> str:
    return request_text(record)


@dataclass
class Pairing:
    """The pairs both files hold once, and what was left out."""

    pairs: list[tuple[dict, dict]]  # (model record, reference record), in the model file's order
    only_model: list[str]
    only_reference: list[str]
    duplicated: list[str]

    def report(self, reference_flag: str = "--reference_outputs") -> str:
        parts = []
        for what, keys in (("only in --model_outputs", self.only_model),
                           (f"only in {reference_flag}", self.only_reference),
                           ("more than once in a file", self.duplicated)):
            if keys:
                shown = "; ".join(repr(k[:60]) for k in keys[:3])
                parts.append(f"{len(keys)} instruction(s) {what}, left out (first: {shown})")
        return ". ".join(parts)


def pair_records(model: Sequence[dict], reference: Sequence[dict]) -> Pairing:
    """Matches records by their request (`pair_key`); never guesses for a missing or repeated one."""
    def index(records):
        seen, dup = {}, set()
        for r in records:
            k = pair_key(r)
            if k in seen:
                dup.add(k)
            seen[k] = r
        return seen, dup

    m, m_dup = index(model)
    r, r_dup = index(reference)
    duplicated = m_dup | r_dup
    pairs, done = [], set()
    for rec in model:
        k = pair_key(rec)
        if k in r and k not in duplicated and k not in done:
            pairs.append((rec, r[k]))
            done.add(k)
    return Pairing(
        pairs=pairs,
        only_model=[k for k in m if k not in r and k not in duplicated],
        only_reference=[k for k in r if k not in m and k not in duplicated],
        duplicated=sorted(duplicated),
    )
