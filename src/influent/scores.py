"""Scores: an influence matrix with the ids of its rows and columns, and a streaming top-k."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .errors import InputError


@dataclass(frozen=True)
class Scores:
    """values[q, i] = g_qᵀ(H + λI)⁻¹g_i; positive = helpful. 1-D for self-influence."""

    values: Tensor
    query_ids: Sequence
    train_ids: Sequence
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def top_k(self, k: int, largest: bool = True) -> tuple[Tensor, Tensor]:
        """(values, indices) of the k most helpful (largest=False: most harmful) per query."""
        k = _check_k(k, self.values.shape[-1])
        return torch.topk(self.values, k, dim=-1, largest=largest)

    def proponents(self, k: int = 10) -> list[list]:
        """Train ids of the k most helpful examples for each query."""
        return [[self.train_ids[j] for j in row] for row in self.top_k(k)[1].tolist()]

    def opponents(self, k: int = 10) -> list[list]:
        """Train ids of the k most harmful examples for each query."""
        return [[self.train_ids[j] for j in row] for row in self.top_k(k, largest=False)[1].tolist()]

    def predicted_loo_change(self) -> Tensor:
        """Predicted change of each query's loss when each training example is removed: +score / n."""
        return self.values / len(self.train_ids)


def _check_k(k: int, n: int) -> int:
    if not isinstance(k, int) or k <= 0:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return min(k, n)


class StreamingTopK:
    """Keeps the k largest (or smallest) values per row while column blocks stream past.

    Memory is O(n_rows · k + one block); the result equals a full sort's top-k (ties resolved
    towards the earlier column).
    """

    def __init__(self, n_rows: int, k: int, largest: bool = True, dtype: torch.dtype = torch.float64):
        self.k, self.largest = k, largest
        fill = float("-inf") if largest else float("inf")
        self.values = torch.full((n_rows, 0), fill, dtype=dtype)
        self.indices = torch.zeros((n_rows, 0), dtype=torch.long)

    def update(self, block: Tensor, offset: int) -> None:
        idx = torch.arange(offset, offset + block.shape[1]).expand(block.shape[0], -1)
        vals = torch.cat([self.values, block.detach().to(self.values.dtype).cpu()], dim=1)
        inds = torch.cat([self.indices, idx], dim=1)
        # stable sort keeps the earlier column first among ties
        key = -vals if self.largest else vals
        order = torch.sort(key, dim=1, stable=True).indices[:, : self.k]
        self.values, self.indices = vals.gather(1, order), inds.gather(1, order)

    def result(self) -> tuple[Tensor, Tensor]:
        return self.values, self.indices
