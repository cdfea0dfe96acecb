"""The compressor protocol: a seeded linear map from flat gradients [B, P] to [B, k], fitted once.

Every random choice derives from the constructor seed alone, so training gradients, query
gradients and the curvature all meet the same map; independent maps would break gᵀH⁻¹g
(PAPERS.md §2). Compressors are chained with `Chain`, which feeds each output size into the next.
"""
from __future__ import annotations

import hashlib
import math
import operator
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import InputError, NotFittedError
from ..factors import FactorLayer, Factors, flatten_factors
from ..params import ParamSpace


def flat_space(n: int, name: str = "flat") -> ParamSpace:
    """A one-parameter space of n coordinates (what a compressor after the first in a chain sees)."""
    return ParamSpace((name,), (torch.Size([int(n)]),))


def as_space(space: ParamSpace | int) -> ParamSpace:
    """Accept a ParamSpace or a plain size."""
    if isinstance(space, ParamSpace):
        return space
    try:
        return flat_space(operator.index(space))
    except TypeError:
        raise InputError(f"fit expects a ParamSpace (influent.select_params) or an int size, got "
                         f"{type(space).__name__}") from None


def generator(*key: Any) -> torch.Generator:
    """A CPU generator seeded by a stable hash of `key` (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def split_systematic(k: int, sizes: Sequence[int], u: float) -> list[int]:
    """Split k across groups in proportion to size by systematic rounding with offset u ∈ [0, 1).

    Each share is the floor or the ceiling of k·n_g/P, the shares sum to k, and for u uniform the
    expected share is exactly k·n_g/P, so every coordinate is kept with probability exactly k/P.
    """
    P = sum(sizes)
    shift = u * P
    cuts, acc = [0], 0
    for n in sizes:
        acc += n
        t = k * acc  # floor((k·acc + u·P) / P) in exact integer arithmetic plus one comparison
        cuts.append(t // P + (1 if t % P >= P - shift else 0))
    return [b - a for a, b in zip(cuts, cuts[1:])]


def split_largest_remainder(k: int, sizes: Sequence[int], minimum: int = 1) -> list[int]:
    """Deterministic shares of k ∝ size (largest remainder), each at least `minimum` and at most its size."""
    P = sum(sizes)
    shares = [k * n // P for n in sizes]
    order = sorted(range(len(sizes)), key=lambda g: (-(k * sizes[g] % P), g))
    for g in order[: k - sum(shares)]:
        shares[g] += 1
    for g in range(len(shares)):
        while shares[g] < minimum:
            donor = max(range(len(shares)), key=lambda h: (shares[h], -h))
            shares[donor] -= 1
            shares[g] += 1
    return shares


def rectangle(k: int, rows: int, cols: int) -> tuple[int, int]:
    """(r, c) with r ≤ rows, c ≤ cols, r·c as close to k as possible, aspect ratio near rows:cols."""
    best, key = (1, 1), None
    for r in range(1, min(rows, k) + 1):
        c = min(cols, max(1, round(k / r)))
        cand = (abs(r * c - k), abs(math.log(r * cols / (c * rows))))
        if key is None or cand < key:
            best, key = (r, c), cand
    return best


class Compressor:
    """Base class: validation lives here; subclasses implement `_fit` and `_apply` (and maybe `_apply_factors`).

    Attributes set by `fit`: `space_`, `P_` (input size), `k_` (output size).
    """

    name = "compressor"
    factored = False  # True when apply_factors never forms the [B, P] gradients
    needs_samples = False  # True when fit learns the map from sample gradients (PCA)

    def __init__(self, k: int, seed: int = 0) -> None:
        self.k, self.seed = k, seed

    # ----- public protocol ----------------------------------------------------------------
    def fit(self, space: ParamSpace | int, sample_grads: Tensor | None = None, *,
            layers: list[FactorLayer] | None = None) -> "Compressor":
        """Draw the map for `space` (from the seed only); `layers` (plan_factors) names the Linear layers."""
        self._fitted = False
        space = as_space(space)
        P = space.numel
        try:
            k = operator.index(self.k)
        except TypeError:
            raise InputError(f"{type(self).__name__}: k must be an integer in [1, {P}], got {self.k!r}") from None
        if not 1 <= k <= P:
            raise InputError(f"{type(self).__name__}: k must lie in [1, {P}] (the number of selected parameter "
                             f"coordinates), got k={k}; choose a smaller k or select more parameters")
        if sample_grads is not None and (sample_grads.dim() != 2 or sample_grads.shape[1] != P):
            raise InputError(f"sample gradients must be [n, {P}], got {tuple(sample_grads.shape)}")
        self.space_, self.P_ = space, P
        self._fit(space, k, sample_grads, layers)
        self._fitted = True
        return self

    def apply(self, G: Tensor) -> Tensor:
        """Compress flat gradients [B, P] to [B, k_]."""
        self._check_fitted()
        if not isinstance(G, Tensor) or G.dim() != 2 or G.shape[1] != self.P_:
            shape = tuple(G.shape) if isinstance(G, Tensor) else type(G).__name__
            raise InputError(f"{type(self).__name__} was fitted for gradients [B, {self.P_}], got {shape}; "
                             "pass flat per-example gradients of the same parameter selection")
        return self._apply(G)

    def apply_factors(self, layers: list[FactorLayer], factors: Factors) -> Tensor:
        """Compress per-example Linear-layer factors [(A, D), ...] to [B, k_]; token factors
        A [B, T, d_a], D [B, T, out] stand for the gradient Σ_t D_tᵀ A_t."""
        self._check_fitted()
        if len(layers) != len(factors):
            raise InputError(f"got {len(factors)} factor pairs for {len(layers)} layers")
        B = None
        for l, (A, D) in zip(layers, factors):
            if A.dim() not in (2, 3) or A.shape[:-1] != D.shape[:-1] or A.shape[-1] != l.d_a or D.shape[-1] != l.out:
                raise InputError(f"factors of layer {l.name!r} must be A [B, {l.d_a}], D [B, {l.out}] (or with a "
                                 f"token axis [B, T, ·]); got {tuple(A.shape)}, {tuple(D.shape)}")
            if B is not None and A.shape[0] != B:
                raise InputError("all layers' factors must have the same number of examples")
            B = A.shape[0]
        names = {n for l in layers for n in (l.weight, l.bias) if n}
        if names != set(self.space_.names):
            raise InputError(f"the layers' parameters {sorted(names)} differ from the fitted ones "
                             f"{list(self.space_.names)}; use plan_factors(model, space) on the same selection")
        return self._apply_factors(layers, factors)

    def config(self) -> dict[str, Any]:
        """Constructor arguments and the scale, enough to rebuild it with make_compressor."""
        return {"name": self.name, "k": self.k, "seed": self.seed, "scale": self._scale(), **self._options()}

    @property
    def state_bytes(self) -> int:
        """Bytes of stored state (tensors kept between calls)."""
        return sum(t.numel() * t.element_size() for t in self._state())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k not in ("name", "scale"))
        return f"{type(self).__name__}({args})"

    # ----- hooks for subclasses ---------------------------------------------------------------
    def _fit(self, space: ParamSpace, k: int, sample_grads: Tensor | None, layers: list[FactorLayer] | None) -> None:
        raise NotImplementedError

    def _apply(self, G: Tensor) -> Tensor:
        raise NotImplementedError

    def _apply_factors(self, layers: list[FactorLayer], factors: Factors) -> Tensor:
        # generic fallback: forms the full [B, P] gradients first (factored compressors override)
        return self._apply(flatten_factors(layers, self.space_, factors))

    def _options(self) -> dict[str, Any]:
        return {}

    def _scale(self) -> Any:
        return None

    def _state(self) -> list[Tensor]:
        return []

    def _check_fitted(self) -> None:
        if not getattr(self, "_fitted", False):
            raise NotFittedError(f"{type(self).__name__} was used before fit(space); call "
                                 f".fit(space[, sample_grads]) once, then apply to train and query gradients")


class Chain(Compressor):
    """Compressors applied one after another; each is fitted on the previous one's output size."""

    name = "chain"

    def __init__(self, *parts: Compressor) -> None:
        if not parts or not all(isinstance(p, Compressor) for p in parts):
            raise InputError("Chain takes one or more Compressor objects, e.g. Chain(Dropout(8192), Gaussian(1024))")
        self.parts = list(parts)
        self.k, self.seed = parts[-1].k, [p.seed for p in parts]

    @property
    def factored(self) -> bool:  # type: ignore[override]
        return self.parts[0].factored

    @property
    def needs_samples(self) -> bool:  # type: ignore[override]
        return any(p.needs_samples for p in self.parts)

    def fit(self, space: ParamSpace | int, sample_grads: Tensor | None = None, *,
            layers: list[FactorLayer] | None = None) -> "Chain":
        space = as_space(space)
        current, samples = space, sample_grads
        for i, part in enumerate(self.parts):
            part.fit(current, samples, layers=layers if i == 0 else None)
            if samples is not None and i + 1 < len(self.parts):
                samples = part.apply(samples)
            current = flat_space(part.k_, "compressed")
        self.space_, self.P_, self.k_ = space, space.numel, self.parts[-1].k_
        self._fitted = True
        return self

    def _apply(self, G: Tensor) -> Tensor:
        for part in self.parts:
            G = part.apply(G)
        return G

    def _apply_factors(self, layers: list[FactorLayer], factors: Factors) -> Tensor:
        Z = self.parts[0].apply_factors(layers, factors)
        for part in self.parts[1:]:
            Z = part.apply(Z)
        return Z

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k, "seed": self.seed, "scale": [p._scale() for p in self.parts],
                "parts": [p.config() for p in self.parts]}

    @property
    def state_bytes(self) -> int:  # type: ignore[override]
        return sum(p.state_bytes for p in self.parts)

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.parts))})"
