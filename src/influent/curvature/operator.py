"""Linear operators on the flat parameter space: `matmat`, `@`, `+ λ`, scalar `*`, `dense()`.

Columns are vectors: `op.matmat(V)` takes and returns [P, m]. Concrete curvatures only
implement `_matmat`; algebra and densification live here, once.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..errors import InputError, NumericalError

MAX_DENSE = 25_000  # a dense P × P float64 matrix past this is > 5 GB


class LinearOperator:
    """A symmetric linear map of size P; subclasses implement `_matmat(V: [P, m]) -> [P, m]`."""

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device | str = "cpu"):
        self.size, self.dtype, self.device = int(size), dtype, torch.device(device)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def _matmat(self, V: Tensor) -> Tensor:
        raise NotImplementedError

    def matmat(self, V: Tensor) -> Tensor:
        if V.dim() != 2 or V.shape[0] != self.size:
            raise InputError(f"operator of size {self.size} applied to a block of shape {tuple(V.shape)}; "
                             f"expected [{self.size}, m]")
        return self._matmat(V.to(self.dtype))

    def matvec(self, v: Tensor) -> Tensor:
        return self.matmat(v.reshape(-1, 1)).reshape(-1)

    def __matmul__(self, V: Tensor) -> Tensor:
        return self.matvec(V) if V.dim() == 1 else self.matmat(V)

    def __add__(self, other: "float | LinearOperator") -> "LinearOperator":
        if isinstance(other, LinearOperator):
            return SumOperator([self, other])
        return SumOperator([self, ScaledIdentity(self.size, float(other), self.dtype, self.device)])

    __radd__ = __add__

    def __mul__(self, scalar: float) -> "LinearOperator":
        return ScaledOperator(self, float(scalar))

    __rmul__ = __mul__

    def _check_dense_size(self) -> None:
        if self.size > MAX_DENSE:
            gb = self.size ** 2 * 8 / 1e9
            raise InputError(f"a dense {self.size}×{self.size} curvature would need {gb:.1f} GB; use "
                             "solver='cg', 'lissa' or 'arnoldi', curvature='ekfac', or compress the gradients")

    def dense(self, chunk: int = 256, dtype: torch.dtype | None = None) -> Tensor:
        """The full matrix, built column block by column block and symmetrised."""
        self._check_dense_size()
        out = torch.empty(self.size, self.size, dtype=dtype or self.dtype, device=self.device)
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        for start in range(0, self.size, chunk):
            stop = min(start + chunk, self.size)
            out[:, start:stop] = self.matmat(eye[:, start:stop]).to(out.dtype)
        return (out + out.T) / 2

    def describe(self) -> dict:
        return {"operator": type(self).__name__, "size": self.size}


class DenseOperator(LinearOperator):
    """A matrix held in memory."""

    def __init__(self, matrix: Tensor):
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device)
        self.matrix = matrix

    def _matmat(self, V: Tensor) -> Tensor:
        return self.matrix @ V

    def dense(self, chunk: int = 256, dtype: torch.dtype | None = None) -> Tensor:
        return self.matrix.to(dtype or self.dtype)


class ScaledIdentity(LinearOperator):
    """c · I."""

    def __init__(self, size: int, scale: float = 1.0, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        super().__init__(size, dtype, device)
        self.scale = scale

    def _matmat(self, V: Tensor) -> Tensor:
        return self.scale * V

    def dense(self, chunk: int = 256, dtype: torch.dtype | None = None) -> Tensor:
        self._check_dense_size()
        return self.scale * torch.eye(self.size, dtype=dtype or self.dtype, device=self.device)

    def inverse(self, damping: float) -> Callable[[Tensor], Tensor]:
        """(c + λ)⁻¹ B without a dense matrix, so solver='direct' on curvature='identity' scales to any P."""
        total = self.scale + float(damping)
        if not total != 0:
            raise NumericalError(f"{self.scale:g}·I + damping {float(damping):g} is singular; use damping > 0")
        return lambda B: B / total


def Identity(size: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> ScaledIdentity:
    """The identity operator (curvature="identity": plain gradient similarity)."""
    return ScaledIdentity(size, 1.0, dtype, device)


class SumOperator(LinearOperator):
    def __init__(self, parts: list[LinearOperator]):
        super().__init__(parts[0].size, parts[0].dtype, parts[0].device)
        if any(p.size != self.size for p in parts):
            raise InputError("cannot add operators of different sizes")
        # flatten nested sums so that split_damping sees every λ·I term
        self.parts = [q for p in parts for q in (p.parts if isinstance(p, SumOperator) else [p])]

    def _matmat(self, V: Tensor) -> Tensor:
        return sum(p.matmat(V) for p in self.parts)  # type: ignore[return-value]


class ScaledOperator(LinearOperator):
    def __init__(self, base: LinearOperator, scale: float):
        super().__init__(base.size, base.dtype, base.device)
        self.base, self.scale = base, scale

    def _matmat(self, V: Tensor) -> Tensor:
        return self.scale * self.base.matmat(V)


def split_damping(op: LinearOperator) -> tuple[LinearOperator, float]:
    """Peel `+ λ` terms off an operator: returns (curvature, λ) so solvers can treat λ exactly."""
    if isinstance(op, SumOperator):
        lam, rest = 0.0, []
        for p in op.parts:
            if isinstance(p, ScaledIdentity):
                lam += p.scale
            else:
                rest.append(p)
        if len(rest) == 1:
            return rest[0], lam
        if rest:
            return SumOperator(rest), lam
    return op, 0.0


def power_iteration(op: LinearOperator, iters: int = 30, seed: int = 0) -> float:
    """Largest |eigenvalue| of a symmetric operator (a few matvecs, seeded)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(op.size, generator=g, dtype=torch.float64).to(op.dtype).to(op.device)
    v = v / v.norm()
    lam = 0.0
    for _ in range(iters):
        w = op.matvec(v)
        lam = float(torch.dot(v.double(), w.double()))
        nrm = float(w.norm())
        if nrm == 0 or not math.isfinite(nrm):
            return abs(lam)
        v = w / nrm
    return abs(lam)
