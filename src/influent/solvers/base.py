"""The solver protocol: `fit(curvature, damping)` once, then `solve(B)` for many right-hand sides.

`solve` takes and returns column blocks [P, m] and approximates (H + λI)⁻¹ B. Every solver
records what it did in `info_` (iterations, residual, rank, seconds).
"""
from __future__ import annotations

import time
from typing import Any

from torch import Tensor

from ..curvature.operator import LinearOperator
from ..errors import InputError, NotFittedError


class Solver:
    """Base class: subclasses implement `_fit` and `_solve`; validation and timing live here."""

    name = "solver"

    def __init__(self) -> None:
        self.info_: dict[str, Any] = {}
        self._fitted = False

    def fit(self, curvature: LinearOperator, damping: float) -> "Solver":
        damping = float(damping)
        if not damping >= 0:
            raise InputError(f"damping must be >= 0, got {damping}; use e.g. the model's weight decay")
        self.curvature_, self.damping_ = curvature, damping
        t0 = time.perf_counter()
        self._fit(curvature, damping)
        self.info_["fit_seconds"] = time.perf_counter() - t0
        self._fitted = True
        return self

    def solve(self, B: Tensor) -> Tensor:
        if not self._fitted:
            raise NotFittedError(f"{type(self).__name__}.solve called before fit(curvature, damping)")
        if B.dim() != 2 or B.shape[0] != self.curvature_.size:
            raise InputError(f"right-hand sides must be [{self.curvature_.size}, m], got {tuple(B.shape)}")
        t0 = time.perf_counter()
        X = self._solve(B)
        self.info_["solve_seconds"] = self.info_.get("solve_seconds", 0.0) + time.perf_counter() - t0
        return X

    def _fit(self, curvature: LinearOperator, damping: float) -> None:
        raise NotImplementedError

    def _solve(self, B: Tensor) -> Tensor:
        raise NotImplementedError

    # ----- persistence: tensors only; solvers that need the operator refit on load ----------
    def __getstate__(self) -> dict[str, Any]:
        """Pickle the configuration only (Attributor.save): fitted state travels through state_dict()."""
        return {k: v for k, v in self.__dict__.items() if not (k.startswith("_") or k.endswith("_"))}

    def __setstate__(self, state: dict[str, Any]) -> None:
        Solver.__init__(self)
        self.__dict__.update(state)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], curvature: LinearOperator, damping: float) -> "Solver":
        return self.fit(curvature, damping)

    def config(self) -> dict[str, Any]:
        """Constructor options, for manifests and reports."""
        return {"name": self.name}

    def describe(self) -> dict[str, Any]:
        return {**self.config(), **{k: v for k, v in self.info_.items() if isinstance(v, (int, float, str, bool))}}


class Identity(Solver):
    """No curvature: scores are plain gradient similarities g_qᵀ g_i."""

    name = "identity"

    def _fit(self, curvature, damping):
        pass

    def _solve(self, B):
        return B

    def load_state_dict(self, state, curvature, damping):
        self.curvature_, self.damping_, self._fitted = curvature, damping, True
        return self
