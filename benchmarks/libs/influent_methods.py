"""influent's own methods, configured once here so the benchmark columns use the same options everywhere."""
from __future__ import annotations

from typing import Any

from torch import Tensor

from . import Method, Problem

# (curvature, solver name, solver options): options chosen as in benchmarks/solvers.py (digits) and
# cut to a fixed budget on MNIST, where the exact curvature's products cost a pass over 60k examples.
SMALL = {
    "hessian+direct (exact)": ("hessian", "direct", None),
    "ggn+direct": ("ggn", "direct", None),
    "empirical_fisher+direct": ("empirical_fisher", "direct", None),
    "ekfac+direct": ("ekfac", "direct", None),
    "kfac+direct": ("kfac", "direct", None),
    "ggn+arnoldi r=100": ("ggn", "arnoldi", dict(rank=100, iterations=200)),
    "hessian+arnoldi r=100": ("hessian", "arnoldi", dict(rank=100, iterations=200)),
    "hessian+cg (block)": ("hessian", "cg", dict(rtol=1e-6, max_iter=300)),
    "hessian+cg (block), EK-FAC preconditioned": ("hessian", "cg", dict(rtol=1e-6, max_iter=300,
                                                                        preconditioner="ekfac")),
    "hessian+cg (one per column)": ("hessian", "cg", dict(rtol=1e-6, max_iter=300, block=False)),
    "hessian+lissa": ("hessian", "lissa", dict(depth=1000)),
    "identity": ("identity", "identity", None),
}
LARGE = {
    "ekfac+direct": ("ekfac", "direct", None),
    "kfac+direct": ("kfac", "direct", None),
    "identity": ("identity", "identity", None),
    "identity, last layer": ("identity", "identity", None, dict(params="last")),  # ≈ Captum's TracInCPFast
}
SOLVERS = {"arnoldi": "Arnoldi", "cg": "CG", "lissa": "LiSSA"}


def _attributor(p: Problem, curvature: str, solver: str, opts: dict | None, extra: dict | None = None) -> Any:
    import influent as inf

    s = getattr(inf.solvers, SOLVERS[solver])(**opts) if opts else solver
    return inf.Attributor(p.model, inf.Task.classification(), curvature=curvature, solver=s,
                          damping=p.weight_decay, batch_size=p.batch_size, **(extra or {})).fit(p.train)


def _scores(config: tuple) -> Method:
    def run(p: Problem) -> Tensor:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a budgeted CG/LiSSA warns that it stopped early
            return _attributor(p, *config).score(p.query).values.double()
    return run


def _self(config: tuple) -> Method:
    def run(p: Problem) -> Tensor:
        return _attributor(p, *config).self_influence().double()
    return run

SLOW = {"hessian+cg (one per column)", "hessian+lissa"}  # left out by --quick


def methods(scale: str) -> dict[str, Method]:
    """name -> p -> [n_query, n_train] scores; scale 'small' (digits) or 'large' (MNIST)."""
    return {k: _scores(v) for k, v in (SMALL if scale == "small" else LARGE).items()}


def self_methods(scale: str) -> dict[str, Method]:
    """name -> p -> [n_train] self-influence g_i^T (H + λI)^{-1} g_i."""
    return {k: _self(v) for k, v in (SMALL if scale == "small" else LARGE).items()}
