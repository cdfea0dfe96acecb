"""pyDVL 0.10 (direct, CG, LiSSA, Arnoldi, Nyström sketch, inverse harmonic mean, EK-FAC) under influent's conventions.

Conventions fixed here: pyDVL's operators average the (mean-reduced) loss curvature over the
batches of the loader, i.e. the mean-loss curvature, and `regularization` is added to it, so
λ = wd. EK-FAC runs on a float32 copy of the model (it fails on float64). In InfluenceMode.Up pyDVL 0.10 returns g_q^T (H + λI)^{-1} g_i, positive = helpful (checked:
its direct solve equals influent's exact scores to rounding, ratio +1): sign +1. Layout [query, train].

"direct (gauss-newton)": pyDVL's SecondOrderMode.GAUSS_NEWTON matrix is Σ_i g_i g_iᵀ over per-example
loss gradients with the true labels, i.e. the EMPIRICAL FISHER (influent's curvature="empirical_fisher"),
not the GGN. pyDVL 0.10's `functional.gauss_newton` also divides that sum by a wrong count (library
bug): it starts n_points at 0, skips the first batch and adds `t.shape[0]` of each [P, P] batch
matrix, so it returns Σ g gᵀ / ((B − 1)·P) for B batches and P parameters — 0/0 (all scores NaN)
with one full batch. We fit it on B ≥ 2 batches and undo the known factor c = n / ((B − 1)·P):
regularization c·λ and scores × c give exactly g_qᵀ(F + λI)⁻¹g_i with F the mean empirical Fisher.
A probe on one example repeated in two batches measures pyDVL's normalisation first, so a fixed
pyDVL (c = 1) or another change (error) is noticed instead of silently mis-scaled.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import Method, Problem, as_scores, float32_copy


def _gauss_newton_count(p: Problem) -> float:
    """The count pyDVL's `gauss_newton` divides Σ g gᵀ by, on 2 batches of 1 example (correct: 2; 0.10: P)."""
    import torch.nn.functional as F
    from pydvl.influence.torch.functional import gauss_newton

    model, x, y = p.model, p.train[0][:1], p.train[1][:1]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.repeat(2, 1), y.repeat(2)), batch_size=1)
    mat = gauss_newton(model, F.cross_entropy, loader)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g2 = sum(float((q.grad ** 2).sum()) for q in model.parameters())
    model.zero_grad()
    return 2 * g2 / float(torch.trace(mat))


def _gauss_newton_factor(p: Problem, n_batches: int) -> float:
    """c with pyDVL's GN matrix = c · (mean empirical Fisher) on this loader; see the module docstring."""
    count = _gauss_newton_count(p)
    if abs(count - 2) < 1e-3 * 2:
        return 1.0  # a pyDVL that divides by the number of examples
    if abs(count - p.n_params) < 1e-3 * p.n_params:
        if n_batches < 2:
            raise RuntimeError("pyDVL 0.10 gauss_newton divides by 0 on a single batch (library bug)")
        return p.n / ((n_batches - 1) * p.n_params)
    raise RuntimeError(f"pyDVL gauss_newton normalisation changed (divides by {count:.4g}); re-check the adapter")


def _model(p: Problem, name: str, opts: dict, lam: float | None = None):
    import torch.nn.functional as F
    from pydvl.influence.torch import (ArnoldiInfluence, CgInfluence, DirectInfluence, EkfacInfluence,
                                       InverseHarmonicMeanInfluence, LissaInfluence, NystroemSketchInfluence)
    from pydvl.influence.torch.util import SecondOrderMode

    lam = p.weight_decay if lam is None else lam
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
        c = 1.0
        if name == "direct_gn":  # undo pyDVL 0.10's GN normalisation bug (module docstring)
            c = _gauss_newton_factor(p, -(-p.n // bs))
        m = _model(p, name, opts, lam=c * p.weight_decay).fit(p.loader("train", bs))
        xq, yq = p.query
        out = []
        for s in range(0, p.n, p.batch_size):  # pyDVL scores one train block at a time
            out.append(m.influences(xq, yq, p.train[0][s:s + p.batch_size], p.train[1][s:s + p.batch_size]))
        return as_scores(torch.cat(out, 1), len(yq), p.n, sign=1.0, scale=c)
    return run


SMALL = {
    "direct (hessian)": ("direct", {}, "full"),
    "direct (gauss-newton)": ("direct_gn", {}, "batch"),  # batches: pyDVL 0.10's GN divides by 0 on one
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
