"""Direct solve: a dense float64 factorisation of H + λI (Cholesky; eigh when indefinite)."""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ..errors import NumericalError
from ..finite import all_finite
from .base import Solver


class Direct(Solver):
    """Factor H + λI once in float64. Structured curvatures (K-FAC) use their own exact inverse."""

    name = "direct"

    def _fit(self, curvature, damping):
        self._structured = getattr(curvature, "inverse", None)
        if self._structured is not None:
            self._inv = curvature.inverse(damping)
            self.info_["method"] = "structured"
            self._residual(lambda X: curvature.matmat(X).double() + damping * X.double(), curvature.dtype)
            return
        H = curvature.dense(dtype=torch.float64).detach()  # a graph through the model weights is never needed here
        if not all_finite(H):
            raise NumericalError("the curvature has NaN/Inf entries, so H + λI cannot be factored; a per-example "
                                 "gradient or curvature product overflowed: check the inputs, the loss (e.g. log 0 "
                                 "or sqrt at 0) and the model weights")
        A = H + damping * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            self._chol, self._eig = L, None
            self.info_["method"] = "cholesky"
            self._conditioning(L, damping)
            self._residual(lambda X: A @ X, torch.float64)
            return
        evals, evecs = torch.linalg.eigh(A)
        lo = float(evals.min())
        fix = damping - lo + 1e-6 * max(1.0, float(evals.abs().max()))
        if float(evals.abs().min()) <= 1e-12 * max(1.0, float(evals.abs().max())):
            raise NumericalError(f"H + λI is singular (smallest |eigenvalue| {float(evals.abs().min()):.2e}); "
                                 f"raise the damping to at least {fix:.3g}")
        warnings.warn(f"H + λI is not positive definite (smallest eigenvalue {lo:.3e}); using the indefinite "
                      f"inverse. damping >= {fix:.3g} would make it positive definite.", stacklevel=3)
        self._chol, self._eig = None, (evals, evecs)
        self.info_.update(method="eigh", min_eigenvalue=lo, suggested_damping=fix)
        self._residual(lambda X: A @ X, torch.float64)

    def _conditioning(self, L: Tensor, damping: float) -> None:
        """Warn when H + λI is so ill-conditioned that float64 solves lose most digits, naming a damping that fixes it.

        diag(L)² lies within [λ_min, λ_max], so their ratio is a free lower bound on the condition number."""
        d = L.diagonal().square()
        top, cond = float(d.max()), float(d.max() / d.min())
        self.info_["condition_estimate"] = cond
        if cond > 1e12:
            fix = damping + 1e-10 * top
            self.info_["suggested_damping"] = fix
            warnings.warn(f"H + λI is ill-conditioned (condition number ≥ {cond:.1e}): solves lose about "
                          f"{math.log10(cond):.0f} of float64's 16 digits. damping >= {fix:.3g} would bring it "
                          "to about 1e10.", stacklevel=4)

    def _residual(self, apply, dtype: torch.dtype) -> None:
        """info_['residual']: ‖(H + λI)x − b‖/‖b‖ of one seeded probe solve, the check every solver reports."""
        b = torch.randn(self.curvature_.size, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x = self._solve(b.to(dtype).to(self.curvature_.device)).double()
        self.info_["residual"] = float((apply(x) - b.to(x.device)).norm() / b.norm())

    def _solve(self, B: Tensor) -> Tensor:
        if self._structured is not None:
            return self._inv(B)
        B64 = B.to(torch.float64)
        if self._chol is not None:
            X = torch.cholesky_solve(B64, self._chol)
        else:
            evals, evecs = self._eig
            X = evecs @ ((evecs.T @ B64) / evals[:, None])
        return X.to(B.dtype)

    def state_dict(self):
        if self._structured is not None:
            return {}
        return {"chol": self._chol} if self._chol is not None else {"evals": self._eig[0], "evecs": self._eig[1]}

    def load_state_dict(self, state, curvature, damping):
        if not state:
            return self.fit(curvature, damping)
        self.curvature_, self.damping_, self._structured = curvature, damping, None
        self._chol = state.get("chol")
        self._eig = None if self._chol is not None else (state["evals"], state["evecs"])
        self._fitted = True
        return self
