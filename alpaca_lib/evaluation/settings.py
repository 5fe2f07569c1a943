"""The evaluation's plain settings and file names, shared by the command configs and the code that runs them.

    from alpaca_lib.evaluation.settings import GenerationSettings, journal_path
    settings = GenerationSettings(max_new_tokens=64)   # greedy; settings.check() raises UsageError if unusable

`alpaca_lib/evaluation/config.py` takes its decoding defaults and the leaderboard's default path from here, so
the configs know nothing of the modules that generate, judge or keep the leaderboard; those import this too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpaca_lib.core.errors import UsageError

DEFAULT_LEADERBOARD = "runs/leaderboard.csv"


@dataclass
class GenerationSettings:
    """How each answer is generated; part of a run's identity (a resumed run must use the same)."""

    max_new_tokens: int = field(default=512, metadata={"help": "Most tokens generated per answer."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (with --do_sample True)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling top_p (with --do_sample True)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling (with --do_sample True)."})

    def sampling_kwargs(self) -> dict[str, Any]:
        """`generate`'s sampling arguments: sampled, or greedy with the model's own sampling defaults off."""
        if self.do_sample:
            return dict(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        return dict(do_sample=False, temperature=None, top_p=None, top_k=None)

    def check(self) -> None:
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            raise UsageError(f"--max_new_tokens must be a positive integer; got {self.max_new_tokens!r}")
        if self.do_sample and not self.temperature > 0:
            raise UsageError(f"--temperature must be > 0 when sampling; got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top_p must be in (0, 1]; got {self.top_p!r}")


def journal_path(output_path: str | Path) -> Path:
    """Where `eval_model.py outputs` journals the answers written to `output_path`: `<stem>.journal.jsonl` beside it."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.stem + ".journal.jsonl")
