"""Curvature operators of the mean training loss, and a factory from names."""
from __future__ import annotations

from ..errors import InputError
from ..grads import ModelFunction
from ..inputs import Examples
from .exact import GGN, EmpiricalFisher, Fisher, Hessian
from .operator import (DenseOperator, Identity, LinearOperator, ScaledIdentity, power_iteration,
                       split_damping)

CURVATURES = ("hessian", "ggn", "fisher", "empirical_fisher", "kfac", "ekfac", "identity")


def make_curvature(name: str | LinearOperator, fn: ModelFunction, examples: Examples, *,
                   batch_size: int = 512, seed: int = 0, start: int = 0) -> LinearOperator:
    """Build the curvature operator named `name` on the curvature set `examples`.

    `start` is the global position of the set's first example (a distributed rank's shard), so the
    true Fisher samples the same labels as one process would."""
    if isinstance(name, LinearOperator):
        return name
    if not isinstance(name, str) or name not in CURVATURES:
        raise InputError(f"unknown curvature {name!r}; choose one of {', '.join(CURVATURES)}")
    if name == "hessian":
        return Hessian(fn, examples, batch_size)
    if name == "ggn":
        return GGN(fn, examples, batch_size)
    if name == "fisher":
        return Fisher(fn, examples, batch_size, seed=seed, start=start)
    if name == "empirical_fisher":
        return EmpiricalFisher(fn, examples, batch_size)
    if name == "identity":
        p0 = next(iter(fn.params.values()))
        return Identity(fn.space.numel, p0.dtype, p0.device)
    from .kfac import KFAC  # K-FAC/EK-FAC (hooks on Linear/Conv2d)
    return KFAC(fn, examples, batch_size=batch_size, seed=seed, eigen_corrected=(name == "ekfac"))


__all__ = ["CURVATURES", "GGN", "DenseOperator", "EmpiricalFisher", "Fisher", "Hessian", "Identity",
           "LinearOperator", "ScaledIdentity", "make_curvature", "power_iteration", "split_damping"]
