"""Solvers for (H + λI)⁻¹ B: direct, CG, LiSSA, Arnoldi, identity; `make_solver` maps names to them."""
from __future__ import annotations

from ..errors import InputError
from .base import Identity, Solver
from .direct import Direct

SOLVERS = ("direct", "cg", "lissa", "arnoldi", "identity", "auto")


def __getattr__(name: str):  # lazy: the iterative solvers live in their own modules
    if name == "CG":
        from .cg import CG
        return CG
    if name == "LiSSA":
        from .lissa import LiSSA
        return LiSSA
    if name == "Arnoldi":
        from .arnoldi import Arnoldi
        return Arnoldi
    raise AttributeError(name)


def make_solver(solver: "str | Solver", *, curvature_name: str = "", size: int = 0, seed: int = 0) -> Solver:
    """A fresh solver from a name (with defaults) or the configured object itself."""
    if isinstance(solver, Solver):
        return solver
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise InputError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)} or pass a configured "
                         "object such as influent.solvers.CG(rtol=1e-8)")
    if solver == "auto":
        # Structured curvatures invert exactly; small dense ones factor; large ones iterate.
        if curvature_name in ("kfac", "ekfac", "identity") or size <= 12_000:
            solver = "direct" if curvature_name != "identity" else "identity"
        else:
            solver = "cg"
    if solver == "direct":
        return Direct()
    if solver == "identity":
        return Identity()
    if solver == "cg":
        from .cg import CG
        return CG()
    if solver == "lissa":
        from .lissa import LiSSA
        return LiSSA(seed=seed)
    from .arnoldi import Arnoldi
    return Arnoldi(seed=seed)


__all__ = ["SOLVERS", "Direct", "Identity", "Solver", "make_solver", "CG", "LiSSA", "Arnoldi"]
