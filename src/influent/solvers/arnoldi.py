"""Arnoldi low-rank inverse (Schioppa et al. 2022): top-|θ| Ritz pairs of H from a Krylov basis.

The solve is Σ_m u_m (u_mᵀ b)/(θ_m + λ): with λ = 0 the paper's truncated inverse, with λ > 0 its
damped form, and with `extension=True` plus the Woodbury complement (b − UUᵀb)/λ so that
directions outside the top-r subspace get weight 1/λ instead of 0.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..curvature.operator import LinearOperator, split_damping
from ..finite import all_finite
from ..progress import track
from ..errors import InputError, NumericalError
from .base import Solver
from .cg import check_rhs

NEGATIVES = ("drop", "signed", "shift")


class Arnoldi(Solver):
    """Krylov basis of `iterations` HVPs, Gram-Schmidt twice, eigh of the symmetrised T in float64.

    Example: ``Arnoldi(rank=100, iterations=200).fit(H, damping=0.0).solve(B)``.
    """

    name = "arnoldi"

    def __init__(self, rank: int = 100, iterations: int = 200, negatives: str = "drop", seed: int = 0,
                 tol: float = 1e-6, extension: bool = False, progress: bool = False):
        super().__init__()
        if int(rank) < 1 or int(iterations) < 1:
            raise InputError(f"Arnoldi rank and iterations must be positive integers, got rank={rank}, "
                             f"iterations={iterations}")
        if negatives not in NEGATIVES:
            raise InputError(f"Arnoldi negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}")
        if not tol >= 0:
            raise InputError(f"Arnoldi tol must be >= 0, got {tol}")
        self.rank, self.iterations, self.negatives = int(rank), int(iterations), negatives
        self.seed, self.tol, self.extension, self.progress = int(seed), float(tol), bool(extension), progress

    def config(self) -> dict:
        return {"name": self.name, "rank": self.rank, "iterations": self.iterations, "negatives": self.negatives,
                "seed": self.seed, "tol": self.tol, "extension": self.extension, "progress": self.progress}

    def _damping(self, curvature: LinearOperator, damping: float) -> tuple[LinearOperator, float]:
        op, extra = split_damping(curvature)
        lam = damping + extra
        if self.extension and not lam > 0:
            raise InputError("Arnoldi(extension=True) weights the complement of the top-r subspace by 1/λ, so it "
                             "needs damping > 0; pass a damping (e.g. the weight decay) or extension=False")
        return op, lam

    def _fit(self, curvature: LinearOperator, damping: float) -> None:
        op, self._lam = self._damping(curvature, damping)
        Q, T, hvps = self._krylov(op)
        theta, U = torch.linalg.eigh((T + T.T) / 2)                  # float64
        order = torch.argsort(theta.abs(), descending=True)[: self.rank]
        theta, U = theta[order], U[:, order]
        n_found = theta.numel()
        keep = self._policy(theta)
        theta, U = theta[keep], U[:, keep]
        ritz = self._beta * U[-1].abs()                             # ‖H u_m − θ_m u_m‖, relative to ‖H‖ ≈ max|θ|
        self.info_["residual"] = float(ritz.max() / theta.abs().max()) if theta.numel() else 0.0
        self.eigenvalues_ = theta
        self.eigenvectors_ = Q @ U.to(Q.dtype)                        # u_m = Σ_i U[i, m] q_i: [P, r]
        self.rank_ = int(theta.numel())
        self.info_.update(iterations=hvps, krylov_dim=int(Q.shape[1]), rank=self.rank_,
                          dropped=n_found - self.rank_, eigenvalues=[float(t) for t in theta], damping=self._lam)
        if self.rank_ == 0:
            warnings.warn(f"Arnoldi kept none of its {n_found} eigenpairs under negatives={self.negatives!r}, so "
                          "solves return zero (or only the 1/λ complement with extension=True); use "
                          "negatives='signed' or 'shift', or check the sign of the curvature", stacklevel=3)

    def _krylov(self, op: LinearOperator) -> tuple[Tensor, Tensor, int]:
        """Arnoldi with full re-orthogonalisation; returns Q [P, k], T [k, k] (float64).

        The basis is stored as contiguous rows, and each new vector is orthogonalised against all of
        it by classical Gram-Schmidt, repeated when the DGKS test sees cancellation (as ARPACK does):
        as accurate as modified Gram-Schmidt plus a second pass, in matrix-vector products.
        """
        P, dtype, device = op.size, op.dtype, op.device
        n = min(self.iterations, P)
        g = torch.Generator().manual_seed(self.seed)
        q = torch.randn(P, generator=g, dtype=torch.float64)
        Q = torch.zeros(n + 1, P, dtype=dtype, device=device)
        Q[0] = (q / q.norm()).to(dtype).to(device)
        A = torch.zeros(n + 1, n, dtype=torch.float64)
        k = n
        for i in track(range(n), n, "Arnoldi iterations", self.progress):
            w = op.matmat(Q[i][:, None]).reshape(-1)
            if not all_finite(w):
                raise NumericalError(f"Arnoldi: the curvature product at iteration {i} has NaN/Inf; check the "
                                     "model weights and the curvature data")
            basis = Q[: i + 1]
            norm_in = float(w.norm())
            h = basis @ w
            w = w - basis.T @ h
            beta = float(w.norm())
            if beta < 0.7071 * norm_in:                             # DGKS test: cancellation, so orthogonalise again
                h2 = basis @ w
                w = w - basis.T @ h2
                h = h + h2
                beta = float(w.norm())
            A[: i + 1, i] = h.double().cpu()
            A[i + 1, i] = beta
            if beta < self.tol:                                     # invariant subspace found: stop early
                k = i + 1
                break
            if i + 1 < n:
                Q[i + 1] = w / beta
        self.info_["early_stop"] = k < n
        self._beta = float(A[k, k - 1])                             # ‖H u − θ u‖ = β·|last entry of u| (Ritz)
        return Q[:k].T, A[:k, :k], k

    def _policy(self, theta: Tensor) -> Tensor:
        """Which Ritz pairs to invert: drop (θ > 0), shift (θ + λ > 0) or signed (all non-singular)."""
        lam = self._lam
        if self.negatives == "drop":
            keep = theta > 0
        elif self.negatives == "shift":
            keep = theta + lam > 0
        else:
            keep = torch.ones_like(theta, dtype=torch.bool)
        scale = float(theta.abs().max()) if theta.numel() else 0.0
        keep &= (theta + lam).abs() > 1e-12 * max(scale, lam)       # numerically singular: never invert
        return keep

    def low_rank(self) -> tuple[Tensor, Tensor] | None:
        """(U [P, r], w [r]) with (H + λI)⁻¹ ≈ U diag(w) Uᵀ, so scores need only r projections per
        gradient: score(q, i) = Σ_m w_m (g_q·u_m)(g_i·u_m). None with the Woodbury extension."""
        if self.extension:
            return None
        w = 1.0 / (self.eigenvalues_.double() + self._lam)
        return self.eigenvectors_, w.to(self.eigenvectors_.dtype)

    def _solve(self, B: Tensor) -> Tensor:
        check_rhs(B, "Arnoldi")
        U = self.eigenvectors_
        b = B.to(U.dtype)
        C = (U.T @ b).double() / (self.eigenvalues_.double() + self._lam)[:, None]
        X = U @ C.to(U.dtype)
        if self.extension:
            X = X + (b - U @ (U.T @ b)) / self._lam
        return X.to(B.dtype)

    def state_dict(self) -> dict:
        return {"eigenvalues": self.eigenvalues_, "eigenvectors": self.eigenvectors_}

    def load_state_dict(self, state: dict, curvature: LinearOperator, damping: float) -> "Arnoldi":
        """Restore the eigenpairs without refitting (the Krylov pass is the expensive part)."""
        if not state:
            return self.fit(curvature, damping)
        if float(damping) < 0:
            raise InputError(f"damping must be >= 0, got {damping}")
        U, theta = state["eigenvectors"], state["eigenvalues"].to(torch.float64)
        if U.dim() != 2 or U.shape[0] != curvature.size or U.shape[1] != theta.numel():
            raise InputError(f"saved Arnoldi eigenvectors have shape {tuple(U.shape)}, which does not match a "
                             f"curvature of size {curvature.size} and {theta.numel()} eigenvalues; refit instead")
        _, self._lam = self._damping(curvature, float(damping))
        self.curvature_, self.damping_ = curvature, float(damping)
        self.eigenvalues_, self.eigenvectors_ = theta, U.to(curvature.dtype)
        self.rank_ = int(theta.numel())
        self.info_.update(rank=self.rank_, eigenvalues=[float(t) for t in theta], damping=self._lam)
        self._fitted = True
        return self
