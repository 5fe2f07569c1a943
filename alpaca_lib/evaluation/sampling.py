"""Seeded sampling for batched local generation: each row of a batch draws from its own generator.

    sampler = RowSampler([seed + i for i in rows], temperature=0.7, top_p=0.9)
    model.generate(**batch, do_sample=False, logits_processor=[sampler])

A row's answer then depends on its own seed only, not on which prompts share its batch, so a killed sampled run
resumes to the same file as an uninterrupted one.
"""

from __future__ import annotations

from typing import Sequence


class RowSampler:
    """A logits processor that samples each row's next token (temperature, then top-p) with that row's own
    torch generator, and leaves only that token possible, so greedy decoding takes it."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        import torch  # deferred: only a local model needs torch

        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        import torch  # deferred: only a local model needs torch

        probs = torch.softmax(scores.float().cpu() / self.temperature, dim=-1)
        if self.top_p < 1.0:  # keep the most likely tokens up to top_p of the mass (at least one)
            sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs > self.top_p
            probs = probs.scatter(-1, sorted_ids, sorted_probs.masked_fill(outside, 0.0))
        chosen = torch.stack([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, self.generators)])
        only = torch.full_like(scores, float("-inf"))
        return only.scatter(-1, chosen.to(scores.device), 0.0)
