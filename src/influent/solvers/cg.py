"""Conjugate gradients on H + λI for a block of right-hand sides.

By default block CG (solvers/block_cg.py): all columns share one Krylov space, so related columns
(the gradients of many queries) converge in far fewer iterations. `block=False` runs one independent
CG per column, vectorised: each iteration pushes all still-active columns through one `matmat`.
Either way each column stops at its own ‖r‖/‖b‖ ≤ rtol. Needs a positive-definite damped operator.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from ..curvature.operator import LinearOperator, split_damping
from ..finite import all_finite
from ..progress import Bar
from ..errors import InputError, NumericalError
from .base import Solver
from .block_cg import block_cg


def check_rhs(B: Tensor, solver: str) -> None:
    """Refuse NaN/Inf right-hand sides before iterating (they would surface as a confusing divergence)."""
    if not all_finite(B):
        raise InputError(f"{solver}: the right-hand sides contain NaN or Inf; check the gradients "
                         "(a diverged model, or a loss that overflowed)")


PRECONDITIONERS = ("kfac", "ekfac")


class CG(Solver):
    """Conjugate gradients on a block of columns; stops each column at ‖r‖/‖b‖ ≤ rtol.

    `max_iter=None` means 10·P, as in SciPy: in floating point an ill-conditioned system can need more
    than the P steps of exact arithmetic. Example: ``CG(rtol=1e-8).fit(H, damping=1e-3).solve(B)``.

    `preconditioner="kfac"` or `"ekfac"` (built by the Attributor on the same curvature set and damping),
    or any fitted object with `.solve(B)` ≈ (H + λI)⁻¹B, turns this into preconditioned CG: the answer
    is the same (the residual test is on H + λI itself), reached in fewer products when M ≈ H + λI.

    `block=True` (default) runs breakdown-free block CG: all columns search one shared Krylov space,
    so related right-hand sides converge in fewer iterations (digits MLP, 100 queries: 24 iterations
    instead of > 300), at the price of a thin SVD of the [P, m] search block per iteration.
    `block=False` is textbook CG per column. Same stopping rule, same answer.
    """

    name = "cg"
    preconditioner_: Any = None  # the fitted preconditioner, when there is one

    def __init__(self, rtol: float = 1e-8, max_iter: int | None = None, progress: bool = False,
                 preconditioner: Any = None, block: bool = True):
        super().__init__()
        if not rtol >= 0:
            raise InputError(f"CG rtol must be >= 0, got {rtol}")
        if max_iter is not None and int(max_iter) < 1:
            raise InputError(f"CG max_iter must be a positive integer or None (= problem size), got {max_iter}")
        if isinstance(preconditioner, str) and preconditioner not in PRECONDITIONERS:
            raise InputError(f"unknown CG preconditioner {preconditioner!r}; choose one of "
                             f"{', '.join(PRECONDITIONERS)}, or pass a fitted solver with .solve(B)")
        if not (preconditioner is None or isinstance(preconditioner, str) or hasattr(preconditioner, "solve")):
            raise InputError("a CG preconditioner must be 'kfac', 'ekfac' or an object with .solve(B)")
        self.rtol, self.max_iter, self.progress = float(rtol), max_iter, progress
        self.preconditioner, self.block = preconditioner, bool(block)
        if hasattr(preconditioner, "solve"):
            self.preconditioner_ = preconditioner

    def config(self) -> dict:
        pre = self.preconditioner if isinstance(self.preconditioner, (str, type(None))) else repr(self.preconditioner)
        return {"name": self.name, "rtol": self.rtol, "max_iter": self.max_iter, "progress": self.progress,
                "preconditioner": pre, "block": self.block}

    def _precondition(self, R: Tensor) -> Tensor:
        if self.preconditioner_ is None:
            return R
        return self.preconditioner_.solve(R).to(R.dtype)

    def _fit(self, curvature: LinearOperator, damping: float) -> None:
        # λ folded into the operator (`H + λ`) is peeled off so that it is applied exactly.
        self._op, extra = split_damping(curvature)
        self._lam = damping + extra

    def _apply(self, V: Tensor) -> Tensor:
        return self._op.matmat(V) + self._lam * V

    def _solve(self, B: Tensor) -> Tensor:
        check_rhs(B, "CG")
        dtype = self._op.dtype
        B_ = B.to(dtype)
        P, m = B_.shape
        max_iter = int(self.max_iter) if self.max_iter is not None else 10 * P
        if isinstance(self.preconditioner, str) and self.preconditioner_ is None:
            raise InputError(f"CG(preconditioner={self.preconditioner!r}) is built from the model by the "
                             "Attributor; used on its own, pass a fitted solver as the preconditioner")
        if self.block:
            X, info = block_cg(self._apply, self._precondition, B_, self.rtol, max_iter, self._indefinite,
                               self.progress)
            self.info_.update(info, columns=m, max_iter=max_iter)
            if not info["converged"]:
                self._warn_unconverged(info["iterations"], info["residual"], info["left"], m)
            return X.to(B.dtype)
        X = torch.zeros_like(B_)
        R = B_.clone()
        Z = self._precondition(R)                        # M⁻¹r (r itself without a preconditioner)
        D = Z.clone()                                    # search directions
        rs = (R * R).sum(0)                              # ‖r‖² per column: the convergence test
        rz = (R * Z).sum(0)                              # rᵀM⁻¹r: the step lengths
        bnorm = rs.sqrt()
        target = self.rtol * bnorm
        active = bnorm > 0                               # zero columns solve to zero at once
        matvecs, it = 0, 0
        bar = Bar(max_iter, "CG iterations", self.progress).__enter__()
        while it < max_iter:
            idx = active.nonzero().flatten()
            if idx.numel() == 0:
                break
            it += 1
            Dk = D[:, idx]
            AD = self._apply(Dk)
            matvecs += idx.numel()
            pAp = (Dk * AD).sum(0)
            if not all_finite(pAp):
                raise NumericalError("CG: the curvature product returned NaN/Inf; check the model weights and "
                                     "the curvature data")
            if bool((pAp <= 0).any()):
                rq = pAp / (Dk * Dk).sum(0).clamp_min(torch.finfo(Dk.dtype).tiny)
                self._indefinite(float(rq.min()), it)
            alpha = rz[idx] / pAp
            X[:, idx] += alpha * Dk
            Rk = R[:, idx] - alpha * AD
            R[:, idx] = Rk
            rs_new = (Rk * Rk).sum(0)
            if not all_finite(rs_new):
                raise NumericalError("CG produced NaN/Inf residuals; the operator returned non-finite values. "
                                     "Check the model weights and the curvature data, or raise the damping")
            Zk = self._precondition(Rk)
            rz_new = (Rk * Zk).sum(0)
            D[:, idx] = Zk + (rz_new / rz[idx]) * Dk
            rs[idx], rz[idx] = rs_new, rz_new
            active[idx[rs_new.sqrt() <= target[idx]]] = False
            if self.progress and (it % 10 == 0 or not bool(active.any())):
                rel = float((rs.sqrt() / bnorm.clamp_min(torch.finfo(dtype).tiny)).max())
                bar.advance(10 if it % 10 == 0 else it % 10, f"{int(active.sum())}/{m} active, residual {rel:.1e}")
        bar.__exit__()
        rel = rs.sqrt() / bnorm.clamp_min(torch.finfo(dtype).tiny)
        rel[bnorm == 0] = 0
        res = float(rel.max()) if m else 0.0
        converged = not bool(active.any())
        self.info_.update(iterations=it, matvecs=matvecs, residual=res, converged=converged,
                          columns=m, max_iter=max_iter)
        if not converged:
            self._warn_unconverged(it, res, int(active.sum()), m)
        return X.to(B.dtype)

    def _warn_unconverged(self, it: int, res: float, left: int, m: int) -> None:
        warnings.warn(f"CG did not converge: after {it} iterations the largest relative residual is "
                      f"{res:.2e} > rtol={self.rtol:.1e} ({left} of {m} columns). Raise max_iter, or raise the damping "
                      f"(now {self._lam:.3g}) to improve the conditioning.", stacklevel=4)

    def _indefinite(self, worst: float, it: int) -> None:
        """Raise with a cheap lower bound on the damping needed: λ − the Rayleigh quotient pᵀ(H+λI)p/pᵀp."""
        raise NumericalError(f"CG found non-positive curvature pᵀ(H + λI)p ≤ 0 at iteration {it}: the damped "
                             f"operator is not positive definite, so CG does not apply. Raise the damping above "
                             f"{self._lam - worst:.3g} at the very least (now {self._lam:.3g}; H has a Rayleigh "
                             f"quotient of {worst - self._lam:.3g}), use a PSD curvature ('ggn', 'fisher'), or "
                             "solver='direct', which handles an indefinite H.")
