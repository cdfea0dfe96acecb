"""pyDVL 0.10 (direct, CG, LiSSA, Arnoldi, Nyström sketch, inverse harmonic mean, EK-FAC) under influent's conventions.

Conventions fixed here: pyDVL's operators average the (mean-reduced) loss curvature over the
batches of the loader, i.e. the mean-loss curvature, and `regularization` is added to it, so
λ = wd. EK-FAC runs on a float32 copy of the model (it fails on float64). In InfluenceMode.Up pyDVL 0.10 returns g_q^T (H + λI)^{-1} g_i, positive = helpful (checked:
its direct solve equals influent's exact scores to rounding, ratio +1): sign +1. Layout [query, train].
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import Method, Problem, as_scores, float32_copy


def _model(p: Problem, name: str, opts: dict):
    import torch.nn.functional as F
    from pydvl.influence.torch import (ArnoldiInfluence, CgInfluence, DirectInfluence, EkfacInfluence,
                                       InverseHarmonicMeanInfluence, LissaInfluence, NystroemSketchInfluence)
    from pydvl.influence.torch.util import SecondOrderMode

    lam = p.weight_decay
    if name == "ekfac":
        return EkfacInfluence(p.model, hessian_regularization=lam, update_diagonal=opts.get("update_diagonal", False))
    cls = {"direct": DirectInfluence, "direct_gn": DirectInfluence, "cg": CgInfluence, "lissa": LissaInfluence,
           "arnoldi": ArnoldiInfluence, "nystroem": NystroemSketchInfluence,
           "ihm": InverseHarmonicMeanInfluence}[name]
    kwargs = dict(opts)
    if name == "direct_gn":
        kwargs["second_order_mode"] = SecondOrderMode.GAUSS_NEWTON
    return cls(p.model, F.cross_entropy, regularization=lam, **kwargs)


def _scores(name: str, opts: dict, fit_batch: str = "full") -> Method:
    def run(p: Problem) -> Tensor:
        torch.manual_seed(0)
        if name == "ekfac" and next(p.model.parameters()).dtype != torch.float32:
            p = float32_copy(p)  # pyDVL 0.10's EK-FAC builds float32 factors and fails on a float64 model
        bs = p.n if fit_batch == "full" else p.batch_size
        m = _model(p, name, opts).fit(p.loader("train", bs))
        xq, yq = p.query
        out = []
        for s in range(0, p.n, p.batch_size):  # pyDVL scores one train block at a time
            out.append(m.influences(xq, yq, p.train[0][s:s + p.batch_size], p.train[1][s:s + p.batch_size]))
        return as_scores(torch.cat(out, 1), len(yq), p.n, sign=1.0)
    return run


SMALL = {
    "direct (hessian)": ("direct", {}, "full"),
    "direct (gauss-newton)": ("direct_gn", {}, "full"),
    "cg": ("cg", dict(maxiter=300, rtol=1e-6, solve_simultaneously=True, warn_on_max_iteration=False), "full"),
    "lissa": ("lissa", dict(maxiter=1000, scale=10.0, warn_on_max_iteration=False), "batch"),
    "arnoldi r=100": ("arnoldi", dict(rank=100), "full"),
    "nystroem r=100": ("nystroem", dict(rank=100), "full"),
    "inverse harmonic mean": ("ihm", {}, "batch"),
    "ekfac": ("ekfac", {}, "batch"),
}
LARGE = {  # Arnoldi / Nyström need hundreds of Hessian products over 60k examples: not run at this scale
    "ekfac": ("ekfac", {}, "batch"),
}

SLOW = {"direct (hessian)", "cg", "lissa"}  # left out by --quick


def methods(scale: str) -> dict[str, Method]:
    return {k: _scores(*v) for k, v in (SMALL if scale == "small" else LARGE).items()}


def self_methods(scale: str) -> dict[str, Method]:
    """pyDVL 0.10 has no self-influence entry point (only query × train matrices): none."""
    return {}
