"""Dropout as a gradient compressor: keep one shared, seeded set of k gradient entries, rescaled.

C(g) = s·g[S] (PAPERS.md §2). With the unbiased scale E[⟨Cg, Ch⟩] = ⟨g, h⟩; with the exact
sub-network curvature the scores are the exact influence of the sub-network in which only S trains
(a global scale s only rescales the damping, λ → λ/s²).

- ``level="element"``: exactly k coordinates drawn without replacement. The budget is split across
  parameters in proportion to their size by *systematic* rounding (a seeded offset u, shares
  ⌊k·n_p/P⌋ or ⌈k·n_p/P⌉ summing to k), so every coordinate is kept with probability exactly k/P
  and the single scale s = √(P/k) is unbiased. Deterministic largest-remainder rounding would keep
  a coordinate of parameter p with probability k_p/n_p ≠ k/P (and drop small parameters with
  k_p = 0), which biases any single scale. Within a parameter the k_p coordinates are the first
  k_p of a permutation seeded by (seed, parameter name): independent of the other parameters.
- ``level="neuron"``: for each Linear layer l keep output units O_l and input columns I_l (the bias
  is column d_in) drawn from generators seeded by (seed, layer name), and keep the |O_l|·|I_l|
  entries of the [W | b] gradient D_iᵀA_i at their crossings. From factors this is
  s_l·(D[:, O] ⊗ A[:, I]): the full gradient is never formed. The budget is split across layers
  by deterministic largest remainder with at least one entry per layer (so k ≥ number of layers),
  then |O_l|·|I_l| ≈ k_l with |O_l|:|I_l| ≈ out:d_a; `k_` is the exact total. An entry is kept with
  probability |O_l||I_l|/P_l, so the per-layer scale s_l = √(P_l/(|O_l||I_l|)) is unbiased
  (P_l = out·d_a). Parameters that are not Linear weights/biases raise InputError naming them:
  the neuron level has no factors for them (use the element level, or a Chain, for those).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..factors import FactorLayer, Factors
from ..params import ParamSpace
from ._layout import LinearBlock, check_layers, linear_blocks
from .base import Compressor, generator, rectangle, split_largest_remainder, split_systematic

LEVELS = ("element", "neuron")


class Dropout(Compressor):
    """Keep k gradient entries (a seeded mask shared by train, query and curvature), unbiasedly rescaled.

    Example:
        >>> Dropout(3, seed=0).fit(10).apply(torch.ones(2, 10)).shape
        torch.Size([2, 3])

    Attributes (after fit): `indices_` (kept flat coordinates, in output order), `weights_`
    (per-entry scale, float64), `scale_` (the element level's √(P/k); None for the neuron level),
    `layer_scales_` and `kept_` ({layer: (O, I)}) for the neuron level. The element level stores its
    k coordinates; the neuron level stores only each layer's rectangle size and redraws O and I from
    (seed, layer name) when applied, so its state is O(number of layers), not O(k).
    """

    name = "dropout"
    factored = True
    _indices: Tensor | None = None
    _weights: Tensor | None = None
    _plan: list = []

    def __init__(self, k: int, level: str = "element", seed: int = 0) -> None:
        super().__init__(k, seed)
        self.level = level

    def _fit(self, space: ParamSpace, k: int, sample_grads: Tensor | None, layers: list[FactorLayer] | None) -> None:
        if self.level not in LEVELS:
            raise InputError(f"Dropout level must be one of {LEVELS}, got {self.level!r}")
        self._blocks: list[LinearBlock] | None = None
        self._coords: dict[tuple[str, ...], list] = {}
        if self.level == "element":
            self._fit_element(space, k)
        else:
            self._fit_neuron(space, k, layers)

    def _fit_element(self, space: ParamSpace, k: int) -> None:
        u = float(torch.rand((), generator=generator(self.seed, "dropout", "split"), dtype=torch.float64))
        counts = split_systematic(k, space.sizes, u)
        kept = [torch.randperm(n, generator=generator(self.seed, "dropout", name))[:c].sort().values + off
                for name, n, off, c in zip(space.names, space.sizes, space.offsets, counts) if c]
        self._indices = torch.cat(kept)
        self.k_, self.scale_ = k, math.sqrt(space.numel / k)
        self._weights = torch.full((k,), self.scale_, dtype=torch.float64)
        self.layer_scales_ = None

    def _fit_neuron(self, space: ParamSpace, k: int, layers: list[FactorLayer] | None) -> None:
        blocks = linear_blocks(space, layers, "Dropout(level='neuron')")
        if k < len(blocks):
            raise InputError(f"Dropout(level='neuron') keeps at least one entry in each of the {len(blocks)} Linear "
                             f"layers; k must lie in [{len(blocks)}, {space.numel}], got k={k}")
        # only the rectangle sizes are kept: the rows and columns are redrawn from the seed when used,
        # so the stored state does not grow with k (drawing them costs O(out + d_a) per layer and call)
        self._plan = [(b, *rectangle(share, b.out, b.d_a))
                      for b, share in zip(blocks, split_largest_remainder(k, [b.size for b in blocks]))]
        self.layer_scales_ = {b.name: math.sqrt(b.size / (n_o * n_i)) for b, n_o, n_i in self._plan}
        self._blocks = blocks
        self._indices = self._weights = None
        self.k_, self.scale_ = sum(n_o * n_i for _, n_o, n_i in self._plan), None

    def _draw(self, b: LinearBlock, n_o: int, n_i: int) -> tuple[Tensor, Tensor]:
        """The kept output units and input columns of one layer, from (seed, layer name) alone."""
        O = torch.randperm(b.out, generator=generator(self.seed, "neuron", b.name, "out"))[:n_o].sort().values
        I = torch.randperm(b.d_a, generator=generator(self.seed, "neuron", b.name, "in"))[:n_i].sort().values
        return O, I

    @property
    def kept_(self) -> dict[str, tuple[Tensor, Tensor]] | None:
        """{layer: (kept output units O, kept input columns I)} for the neuron level (None for element)."""
        if self.level != "neuron":
            return None
        return {b.name: self._draw(b, n_o, n_i) for b, n_o, n_i in self._plan}

    @property
    def indices_(self) -> Tensor:
        """Kept flat coordinates, in output order."""
        if self._indices is not None:
            return self._indices
        return torch.cat([b.flat_index(O[:, None], I[None, :]).reshape(-1)
                          for (b, _, _), (O, I) in zip(self._plan, self.kept_.values())])

    @property
    def weights_(self) -> Tensor:
        """Per-entry scale (float64)."""
        if self._weights is not None:
            return self._weights
        return torch.cat([torch.full((n_o * n_i,), self.layer_scales_[b.name], dtype=torch.float64)
                          for b, n_o, n_i in self._plan])

    # ----- application --------------------------------------------------------------------
    def _apply(self, G: Tensor) -> Tensor:
        Z = G.index_select(1, self.indices_.to(G.device))
        if self.level == "element":
            return Z if self.scale_ == 1.0 else Z * self.scale_
        return Z * self.weights_.to(G.device, G.dtype)

    def _apply_factors(self, layers: list[FactorLayer], factors: Factors) -> Tensor:
        if self.level == "neuron":
            check_layers(self._blocks, layers, "Dropout(level='neuron')")
            parts = []
            for (b, n_o, n_i), (A, D) in zip(self._plan, factors):
                O, I = (t.to(A.device) for t in self._draw(b, n_o, n_i))
                if A.dim() == 3:  # tokens: Σ_t D[t, O] A[t, I]ᵀ, only the kept rows and columns
                    Z = torch.einsum("bto,bti->boi", D[..., O], A[..., I]).reshape(A.shape[0], -1)
                else:
                    Z = (D[:, O, None] * A[:, None, I]).reshape(A.shape[0], -1)
                s = self.layer_scales_[b.name]
                parts.append(Z if s == 1.0 else Z * s)
            return torch.cat(parts, 1)
        A0 = factors[0][0]
        out = A0.new_empty(A0.shape[0], self.k_)
        for pos, o, j, (A, D) in zip(*self._element_coords(layers), factors):
            pos, o, j = pos.to(A.device), o.to(A.device), j.to(A.device)
            out[:, pos] = (D[..., o] * A[..., j]).sum(1) if A.dim() == 3 else D[:, o] * A[:, j]
        return out if self.scale_ == 1.0 else out * self.scale_

    def _element_coords(self, layers: list[FactorLayer]) -> tuple[list, list, list]:
        """Per layer: output positions and (row, column) of the kept entries (cached per layer plan)."""
        key = tuple(l.name for l in layers)
        if key not in self._coords:
            blocks = linear_blocks(self.space_, layers, "Dropout.apply_factors")
            pos, rows, cols = [], [], []
            ar = torch.arange(self.k_)
            for b in blocks:
                mask, o, j = b.coords(self.indices_)
                pos.append(ar[mask]), rows.append(o), cols.append(j)
            self._coords[key] = [pos, rows, cols]
        return tuple(self._coords[key])  # type: ignore[return-value]

    # ----- description --------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        return {"level": self.level}

    def _scale(self) -> Any:
        if not getattr(self, "_fitted", False):
            return "sqrt(P/k)" if self.level == "element" else "sqrt(P_l/(|O_l||I_l|)) per layer"
        return self.scale_ if self.level == "element" else dict(self.layer_scales_)

    def _state(self) -> list[Tensor]:
        # the element level keeps its k coordinates; the neuron level redraws its rows and columns
        return [self._indices, self._weights] if getattr(self, "_fitted", False) and self.level == "element" else []
