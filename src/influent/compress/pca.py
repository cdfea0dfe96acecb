"""PCA compression: project onto the top-k right singular vectors of sample gradients (a learned baseline).

Uncentred, because influence is built from raw inner products of gradients. The SVD runs in
float64; signs are fixed (largest-magnitude entry of each component positive) so refits agree.
Unlike the random maps it is biased (it keeps the dominant directions) and stores P × k numbers.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..factors import FactorLayer
from ..params import ParamSpace
from .base import Compressor

METHODS = ("auto", "full", "lowrank")


class PCA(Compressor):
    """C(g) = Vᵀg with V [P, k] the top-k right singular vectors of sample gradients [n, P] (k ≤ n).

    `method="lowrank"` uses torch.svd_lowrank (randomised, seeded by `seed`); "auto" picks it when
    min(n, P) > 2048. Attributes: `components_` (V, float64), `singular_values_`.

    Example:
        >>> PCA(2).fit(6, torch.randn(5, 6, dtype=torch.float64)).apply(torch.ones(3, 6)).shape
        torch.Size([3, 2])
    """

    name = "pca"
    needs_samples = True

    def __init__(self, k: int, seed: int = 0, method: str = "auto") -> None:
        super().__init__(k, seed)
        self.method = method

    def _fit(self, space: ParamSpace, k: int, sample_grads: Tensor | None, layers: list[FactorLayer] | None) -> None:
        if self.method not in METHODS:
            raise InputError(f"PCA method must be one of {METHODS}, got {self.method!r}")
        if sample_grads is None:
            raise InputError("PCA needs sample gradients: fit(space, sample_grads=G) with G [n, P] and n ≥ k")
        n, P = sample_grads.shape
        if k > min(n, P):
            raise InputError(f"PCA: k must lie in [1, {min(n, P)}] (the number of sample gradients, {n}, "
                             f"bounds the rank), got k={k}; pass more sample gradients or a smaller k")
        S = sample_grads.detach().to(torch.float64)
        if not torch.isfinite(S).all():
            raise InputError("PCA sample gradients contain NaN or Inf")
        lowrank = self.method == "lowrank" or (self.method == "auto" and min(n, P) > 2048)
        if lowrank:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                _, sv, V = torch.svd_lowrank(S, q=min(k + 10, n, P), niter=4)
        else:
            _, sv, Vh = torch.linalg.svd(S, full_matrices=False)
            V = Vh.T
        V = V[:, :k]
        pivot = V.abs().argmax(0)
        V = V * torch.sign(V[pivot, torch.arange(k)])
        self.components_, self.singular_values_, self.k_ = V.cpu(), sv[:k].cpu(), k

    def _apply(self, G: Tensor) -> Tensor:
        return G @ self.components_.to(G.device, G.dtype)

    def _options(self) -> dict[str, Any]:
        return {"method": self.method}

    def _scale(self) -> Any:
        return 1.0

    def _state(self) -> list[Tensor]:
        return [self.components_] if getattr(self, "_fitted", False) else []
