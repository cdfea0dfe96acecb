"""LiSSA: the recursion h_j = b + (1 − d)h_{j−1} − H h_{j−1}/s, with h/s → (H + s·d·I)⁻¹ b and d = λ/s.

It is Richardson iteration x ← x − ((H + λI)x − b)/s, so the residual of the current iterate comes
for free from the product the step needs anyway. Scale and depth default to values read off the
spectrum (power iteration for λ_max, damping as the lower bound on λ_min) instead of by hand.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ..curvature.operator import LinearOperator, power_iteration, split_damping
from ..finite import all_finite
from ..progress import Bar
from ..errors import InputError, NumericalError
from .base import Solver
from .cg import check_rhs

MAX_AUTO_DEPTH = 20_000   # cap of the automatic depth; pass depth= to go further
SCALE_MARGIN = 1.1        # s = 1.1·(λ_max + λ) keeps the iteration matrix's spectral radius below 1
CHECK_EVERY = 10          # residual norms (and the stop) every this many steps; the product is free
DIVERGENCE = 1e3          # a residual this many times its smallest value so far means divergence


class LiSSA(Solver):
    """LiSSA with a spectrum-derived scale and depth and a relative-residual stop.

    Example: ``LiSSA(rtol=1e-6).fit(H, damping=1e-3).solve(B)``; ``info_`` reports scale and steps.
    """

    name = "lissa"

    def __init__(self, depth: int | None = None, scale: float | None = None, batch_size: int | None = None,
                 seed: int = 0, rtol: float = 1e-6, progress: bool = False):
        super().__init__()
        if depth is not None and int(depth) < 1:
            raise InputError(f"LiSSA depth must be a positive integer or None (automatic), got {depth}")
        if scale is not None and not float(scale) > 0:
            raise InputError(f"LiSSA scale must be > 0 or None (automatic), got {scale}")
        if batch_size is not None and int(batch_size) < 1:
            raise InputError(f"LiSSA batch_size must be a positive integer or None (full batch), got {batch_size}")
        if not rtol > 0:
            raise InputError(f"LiSSA rtol must be > 0, got {rtol}")
        self.depth, self.scale, self.batch_size = depth, scale, batch_size
        self.seed, self.rtol, self.progress = int(seed), float(rtol), progress

    def config(self) -> dict:
        return {"name": self.name, "depth": self.depth, "scale": self.scale, "batch_size": self.batch_size,
                "seed": self.seed, "rtol": self.rtol, "progress": self.progress}

    def _fit(self, curvature: LinearOperator, damping: float) -> None:
        self._op, extra = split_damping(curvature)
        lam = self._lam = damping + extra
        if self.scale is None:
            lam_max = power_iteration(self._op, iters=30, seed=self.seed)
            if not math.isfinite(lam_max):
                raise NumericalError("LiSSA: power iteration on the curvature gave NaN/Inf; check the model "
                                     "weights and the curvature data")
            if lam_max + lam <= 0:
                raise NumericalError("LiSSA: the curvature is zero and the damping is 0, so H + λI is singular; "
                                     "use damping > 0")
            self.info_["lambda_max"] = lam_max
            self.scale_ = SCALE_MARGIN * (lam_max + lam)
        else:
            self.scale_ = float(self.scale)
        # Steps ≈ (s / λ_min) · ln(1/rtol); λ is a lower bound on λ_min(H + λI) when H is PSD.
        needed = (self.scale_ / lam) * math.log(1 / self.rtol) if lam > 0 else math.inf
        self.info_["depth_needed"] = needed if math.isfinite(needed) else None
        self.depth_ = int(self.depth) if self.depth is not None else int(min(MAX_AUTO_DEPTH, math.ceil(needed)))
        self._stochastic = False
        if self.batch_size is not None:
            if callable(getattr(self._op, "minibatch", None)):
                self._stochastic = True
            else:
                warnings.warn(f"LiSSA batch_size={self.batch_size} ignored: {type(self._op).__name__} has no "
                              "`minibatch(batch_size, generator)` method, so full-batch LiSSA is used", stacklevel=3)
        self.info_.update(scale=self.scale_, depth=self.depth_, damping=lam, stochastic=self._stochastic)

    def _solve(self, B: Tensor) -> Tensor:
        check_rhs(B, "LiSSA")
        if self._stochastic:
            return self._solve_stochastic(B)
        dtype, s, lam = self._op.dtype, self.scale_, self._lam
        b = B.to(dtype)
        m = b.shape[1]
        H = torch.zeros_like(b)
        bnorm = b.norm(dim=0)
        rel = torch.zeros(m, dtype=dtype, device=b.device)
        idx = (bnorm > 0).nonzero().flatten()            # zero columns solve to zero at once
        Hk, bk, nk = b[:, idx].clone(), b[:, idx], bnorm[idx]   # h_0 = b, active columns only
        best = torch.full_like(nk, math.inf)
        steps = products = 0
        bar = Bar(self.depth_, "LiSSA steps", self.progress).__enter__()
        for step in range(self.depth_ + 1):               # depth updates, plus one product to check the last
            if idx.numel() == 0:
                break
            R = (self._op.matmat(Hk) + lam * Hk) / s - bk    # residual of the iterate x = h/s
            products += 1
            if step % CHECK_EVERY == 0 or step == self.depth_:
                r = R.norm(dim=0) / nk
                rel[idx] = r
                if not all_finite(r) or bool((r > DIVERGENCE * best).any()):
                    self._diverged(step, float(r.max()))
                best = torch.minimum(best, r)
                done = r <= self.rtol
                if self.progress and step > 0:
                    bar.advance(CHECK_EVERY, f"{idx.numel() - int(done.sum())}/{m} active, residual {float(r.max()):.1e}")
                if step == self.depth_ or bool(done.all()):
                    break
                if bool(done.any()):                      # freeze converged columns at their current iterate
                    H[:, idx[done]] = Hk[:, done]
                    keep = ~done
                    idx, Hk, bk, nk, best, R = idx[keep], Hk[:, keep], bk[:, keep], nk[keep], best[keep], R[:, keep]
            Hk = Hk - R                                   # h_j = b + (1 − d)h − Hh/s  =  h − residual
            steps = step + 1
        bar.__exit__()
        H[:, idx] = Hk
        res = float(rel.max()) if m else 0.0
        converged = res <= self.rtol
        self.info_.update(iterations=steps, products=products, residual=res, converged=converged, columns=m)
        if not converged:
            hint = (f"about {self.info_['depth_needed']:.0f} steps are predicted" if self.info_["depth_needed"]
                    else "with damping 0 the step count is unbounded")
            warnings.warn(f"LiSSA did not converge: after {steps} steps the largest relative residual is "
                          f"{res:.2e} > rtol={self.rtol:.1e} (scale {s:.3g}; {hint}). Raise depth, or raise the "
                          f"damping (now {lam:.3g}), or use solver='cg', which needs far fewer steps.", stacklevel=3)
        return (H / s).to(B.dtype)

    def _solve_stochastic(self, B: Tensor) -> Tensor:
        """Mini-batch LiSSA: a fresh (seeded) curvature estimate per step; no residual stop."""
        dtype, s, lam = self._op.dtype, self.scale_, self._lam
        b = B.to(dtype)
        g = torch.Generator().manual_seed(self.seed)
        H = b.clone()
        for step in range(self.depth_):
            op = self._op.minibatch(self.batch_size, g)
            H = b + H - (op.matmat(H) + lam * H) / s
            nrm = float(H.norm())
            if not math.isfinite(nrm):
                self._diverged(step, nrm)
        self.info_.update(iterations=self.depth_, residual=None, converged=None, columns=b.shape[1])
        return (H / s).to(B.dtype)

    def _diverged(self, step: int, res: float) -> None:
        """Raise, telling which scale would work (λ_max estimated by power iteration, on this error path only)."""
        lam_max = power_iteration(self._op, iters=100, seed=self.seed + 1)
        lam_max = max(self.info_.get("lambda_max") or 0.0, lam_max)
        need = SCALE_MARGIN * (lam_max + self._lam)
        if math.isfinite(need) and 2 * self.scale_ < 1.05 * (lam_max + self._lam):   # needs s > λ_max(H+λI)/2
            why = (f"the scale {self.scale_:.3g} is too small for λ_max(H + λI) ≈ {lam_max + self._lam:.3g} (the "
                   f"recursion needs s > λ_max/2); set scale ≥ 1.1·λ_max ≈ {need:.3g}, or scale=None to estimate it")
        else:
            why = (f"the scale {self.scale_:.3g} is large enough for λ_max(H + λI) ≈ {lam_max + self._lam:.3g}, so "
                   "H + λI has negative eigenvalues: raise the damping or use a PSD curvature ('ggn', 'fisher')")
        raise NumericalError(f"LiSSA diverged at step {step} (relative residual {res:.3g}): {why}.")

    def state_dict(self) -> dict:
        return {"scale": torch.tensor(self.scale_, dtype=torch.float64),
                "depth": torch.tensor(self.depth_, dtype=torch.long)}

    def load_state_dict(self, state: dict, curvature: LinearOperator, damping: float) -> "LiSSA":
        if not state:
            return self.fit(curvature, damping)
        scale, depth = self.scale, self.depth
        self.scale, self.depth = float(state["scale"]), int(state["depth"])
        try:
            self.fit(curvature, damping)                 # no power iteration: the scale is given
        finally:
            self.scale, self.depth = scale, depth
        return self
