"""Breakdown-free block conjugate gradients (Ji & Li, BIT 2017) for many right-hand sides at once.

Plain CG runs one Krylov space per column; block CG shares one space across all m columns, so each
column converges in the span of every column's directions and needs far fewer iterations when the
columns overlap (gradients of similar queries do). The search block is re-orthonormalised each step
and directions that became linearly dependent are dropped, which is what keeps it from breaking down
as columns converge. Columns leave the block once their own residual test is met.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import NumericalError
from ..finite import all_finite
from ..progress import Bar


def orthonormal_basis(W: Tensor) -> Tensor:
    """An orthonormal basis of range(W), dropping directions below a rank tolerance (thin SVD)."""
    U, s, _ = torch.linalg.svd(W, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return U[:, :0]
    keep = s > s[0] * max(W.shape) * torch.finfo(W.dtype).eps
    return U[:, keep]


def block_cg(apply: Callable[[Tensor], Tensor], precondition: Callable[[Tensor], Tensor], B: Tensor, rtol: float,
             max_iter: int, indefinite: Callable[[float, int], None], progress: bool = False) -> tuple[Tensor, dict]:
    """Solve A X = B (A symmetric positive definite, given by `apply`) with M⁻¹ = `precondition`.

    Each column stops at ‖r_j‖ ≤ rtol·‖b_j‖. Returns X and an info dict (iterations, matvecs,
    residual = the largest relative residual, converged, left = columns not converged, block = the
    widest search block used). `indefinite(rayleigh_quotient, iteration)` is called, and must raise,
    when A shows a direction of non-positive curvature.
    """
    m = B.shape[1]
    X = torch.zeros_like(B)
    bnorm = B.norm(dim=0)
    target = rtol * bnorm
    active = (bnorm > target).nonzero().flatten()       # zero columns are solved by X = 0
    R = B[:, active].clone()
    rel = (bnorm > 0).to(B.dtype)                       # relative residual per column (recurrence)
    D = orthonormal_basis(precondition(R))              # the search block (orthonormal columns)
    it, matvecs, widest = 0, 0, 0
    with Bar(max_iter, "block CG iterations", progress) as bar:
        while active.numel() and D.shape[1] and it < max_iter:
            it += 1
            Q = apply(D)
            matvecs += D.shape[1]
            widest = max(widest, D.shape[1])
            DtQ = (D.T @ Q + Q.T @ D) / 2
            L, info = torch.linalg.cholesky_ex(DtQ)
            if not all_finite(DtQ):
                raise NumericalError("block CG: the curvature product returned NaN/Inf; check the model weights "
                                     "and the curvature data")
            if int(info) != 0:  # D is orthonormal: the smallest eigenvalue of DᵀAD is a Rayleigh quotient of A
                indefinite(float(torch.linalg.eigvalsh(DtQ)[0]), it)
            alpha = torch.cholesky_solve(D.T @ R, L)
            X[:, active] += D @ alpha
            R -= Q @ alpha
            rnorm = R.norm(dim=0)
            if not all_finite(rnorm):
                raise NumericalError("block CG produced NaN/Inf residuals; raise the damping or check the model")
            rel[active] = rnorm / bnorm[active]
            still = rnorm > target[active]
            if progress:
                bar.advance(1, f"{int(still.sum())}/{m} active, residual {float((rnorm / bnorm[active]).max()):.1e}")
            active, R = active[still], R[:, still]      # finished columns leave the block
            if not active.numel():
                break
            Z = precondition(R)
            beta = -torch.cholesky_solve(Q.T @ Z, L)
            D = orthonormal_basis(Z + D @ beta)
    residual = float(rel.max()) if m else 0.0
    return X, {"iterations": it, "matvecs": matvecs, "residual": residual, "converged": not active.numel(),
               "left": int(active.numel()), "block": widest}
