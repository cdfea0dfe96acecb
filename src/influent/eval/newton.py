"""Line-search Newton-CG on a flat parameter vector, accurate to ‖∇f‖ ~ 1e-12 in float64.

Ground-truth retraining needs a strict optimum; L-BFGS stalls near 1e-9 (PAPERS.md §5), while a
Newton step with exact Hessian-vector products converges quadratically to rounding level.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def newton_cg(f_and_grad: Callable, hvp_at: Callable, x: Tensor, tol: float, max_iter: int,
              cg_max_iter: int) -> tuple[Tensor, float]:
    """Line-search Newton-CG (Nocedal & Wright Alg. 7.1) until ‖∇f‖ < tol; returns (x, ‖∇f‖).

    Near the optimum f changes by ~‖g‖², below float64 resolution, so a step is also accepted when
    f rises by no more than rounding and the gradient norm falls.
    """
    f, g = f_and_grad(x)
    gnorm = float(g.norm())
    for _ in range(max_iter):
        if gnorm < tol:
            break
        rtol = min(0.5, gnorm ** 0.5)
        hvp = hvp_at(x)
        z, r = torch.zeros_like(x), g.clone()
        d, p = -r, None
        for j in range(cg_max_iter):  # CG on H p = -g, stopped at negative curvature
            Hd = hvp(d)
            curv = float(d @ Hd)
            if curv <= 0:
                p = -g if j == 0 else z
                break
            rr = r @ r
            a = rr / curv
            z, r = z + a * d, r + a * Hd
            if float(r.norm()) < rtol * gnorm:
                break
            d = -r + (r @ r) / rr * d
        p = z if p is None else p
        slope = float(g @ p)
        if slope >= 0:
            p, slope = -g, -gnorm ** 2
        t, slack, accepted = 1.0, 1e-13 * max(1.0, abs(float(f))), False
        while t > 1e-10:
            f_new, g_new = f_and_grad(x + t * p)
            gn_new = float(g_new.norm())
            if f_new <= f + 1e-4 * t * slope or (f_new <= f + slack and gn_new < gnorm):
                x, f, g, gnorm, accepted = x + t * p, f_new, g_new, gn_new, True
                break
            t *= 0.5
        if not accepted:
            break  # stalled: report the gradient norm reached
    return x, gnorm
