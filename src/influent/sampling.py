"""Which training examples build the curvature. A sampler returns positions into the train set."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError
from .inputs import Examples


@dataclass(frozen=True)
class Random:
    """n examples drawn uniformly without replacement (seeded)."""

    n: int

    def select(self, examples: Examples, fn=None, seed: int = 0) -> list[int]:
        total = len(examples)
        if not isinstance(self.n, int) or self.n <= 0 or self.n > total:
            raise InputError(f"sampler budget n={self.n!r} must be an integer in [1, {total}] (the training set size)")
        g = torch.Generator().manual_seed(seed)
        return sorted(torch.randperm(total, generator=g)[: self.n].tolist())


def make_sampler(sampler):
    """None (use every training example), an int n (Random(n)), or an object with `select`."""
    if sampler is None or hasattr(sampler, "select"):
        return sampler
    if isinstance(sampler, int) and not isinstance(sampler, bool):
        return Random(sampler)
    raise InputError(f"unknown sampler {sampler!r}; pass None, an integer budget, or influent.sampling.Random(n)")
