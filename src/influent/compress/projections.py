"""Random projections regenerated from the seed, never stored: Gaussian, Rademacher, SJLT, FactoredGaussian.

A dense P × k map for a 124M-parameter model at k = 1024 would be 475 GiB, so Φ is generated
tile by tile (4096 rows × 1024 columns, each tile from a generator seeded by (seed, tile)) while
it is applied. Every map has E[ΦΦᵀ] = I, hence E[⟨Cg, Ch⟩] = ⟨g, h⟩. Tiles are drawn in float32 on
the CPU whatever the gradients' dtype or device, so every call meets the same map.
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
from .base import Compressor, generator, rectangle, split_largest_remainder

TILE_ROWS, TILE_COLS = 4096, 1024  # a tile is at most 16 MiB in float32
SJLT_ROWS = 1 << 16


class _Dense(Compressor):
    """C(g) = g Φ / √k with i.i.d. unit-variance entries of Φ [P, k] regenerated per tile: O(1) state."""

    def _fit(self, space: ParamSpace, k: int, sample_grads: Tensor | None, layers: list[FactorLayer] | None) -> None:
        self.k_ = k

    def _fill(self, tile: Tensor, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _apply(self, G: Tensor) -> Tensor:
        P, k = self.P_, self.k_
        out = G.new_zeros(G.shape[0], k)
        buffer = torch.empty(min(P, TILE_ROWS) * min(k, TILE_COLS))
        for r0 in range(0, P, TILE_ROWS):
            Gb = G[:, r0: r0 + TILE_ROWS]
            for c0 in range(0, k, TILE_COLS):
                cols = min(TILE_COLS, k - c0)
                # a tile is stored transposed, [cols, rows]: the fastest layout for thin batches
                tile = buffer[: cols * Gb.shape[1]].view(cols, Gb.shape[1])
                self._fill(tile, generator(self.seed, self.name, r0 // TILE_ROWS, c0 // TILE_COLS))
                out[:, c0: c0 + cols].addmm_(Gb, tile.to(G.device, G.dtype).T)
        return out / math.sqrt(k)

    def _scale(self) -> Any:
        return 1 / math.sqrt(self.k)


class Gaussian(_Dense):
    """Gaussian projection g Φ / √k, Φ ~ N(0, 1)^{P×k} regenerated blockwise from the seed.

    Example:
        >>> Gaussian(4, seed=0).fit(10).apply(torch.ones(2, 10)).shape
        torch.Size([2, 4])
    """

    name = "gaussian"

    def _fill(self, tile: Tensor, gen: torch.Generator) -> Tensor:
        return torch.randn(tile.shape, generator=gen, out=tile)


class Rademacher(_Dense):
    """Rademacher projection g Φ / √k, Φ uniform on {−1, +1}^{P×k} regenerated blockwise from the seed."""

    name = "rademacher"

    def _fill(self, tile: Tensor, gen: torch.Generator) -> Tensor:
        return torch.randint(0, 2, tile.shape, generator=gen, out=tile).mul_(2).sub_(1)


class SJLT(Compressor):
    """Sparse JL transform: coordinate i adds σ_ir·g_i/√s to bucket h_r(i) for r < s; hashes regenerated per block.

    The s buckets of a coordinate are drawn independently (with replacement); with independent
    signs E[⟨Cg, Ch⟩] = ⟨g, h⟩ all the same. Cost O(B·P·s), state O(1).
    """

    name = "sjlt"

    def __init__(self, k: int, seed: int = 0, s: int = 1) -> None:
        super().__init__(k, seed)
        self.s = s

    def _fit(self, space: ParamSpace, k: int, sample_grads: Tensor | None, layers: list[FactorLayer] | None) -> None:
        if not isinstance(self.s, int) or not 1 <= self.s <= k:
            raise InputError(f"SJLT sparsity s must be an integer in [1, k={k}], got {self.s!r}")
        self.k_ = k

    def hashes(self, start: int, n: int) -> tuple[Tensor, Tensor]:
        """Buckets [s, n] (int64) and signs [s, n] (int8) of coordinates start..start+n-1 (start % 65536 == 0)."""
        gen = generator(self.seed, self.name, start // SJLT_ROWS)
        idx = torch.randint(0, self.k_, (self.s, n), generator=gen)
        sign = torch.randint(0, 2, (self.s, n), generator=gen, dtype=torch.int8).mul_(2).sub_(1)
        return idx, sign

    def _apply(self, G: Tensor) -> Tensor:
        out = G.new_zeros(G.shape[0], self.k_)
        for r0 in range(0, self.P_, SJLT_ROWS):
            Gb = G[:, r0: r0 + SJLT_ROWS]
            idx, sign = self.hashes(r0, Gb.shape[1])
            for r in range(self.s):
                out.index_add_(1, idx[r].to(G.device), Gb * sign[r].to(G.device, G.dtype))
        return out if self.s == 1 else out / math.sqrt(self.s)

    def _options(self) -> dict[str, Any]:
        return {"s": self.s}

    def _scale(self) -> Any:
        return 1 / math.sqrt(self.s)


class FactoredGaussian(Compressor):
    """Per Linear layer, Φ_Dᵀ G Φ_A / √(k_d k_a) = (DΦ_D) ⊗ (AΦ_A) / √(k_d k_a): from factors without forming G.

    The budget is split across layers by largest remainder (at least one entry per layer), then
    k_d·k_a ≈ k_l with k_d:k_a ≈ out:d_a; `k_` is the exact total. Φ_D [out, k_d] and
    Φ_A [d_a, k_a] are Gaussian, seeded by (seed, layer name), stored in float64 (small).
    """

    name = "factored_gaussian"
    factored = True

    def _fit(self, space: ParamSpace, k: int, sample_grads: Tensor | None, layers: list[FactorLayer] | None) -> None:
        blocks = linear_blocks(space, layers, "FactoredGaussian")
        if k < len(blocks):
            raise InputError(f"FactoredGaussian keeps at least one entry in each of the {len(blocks)} Linear layers; "
                             f"k must lie in [{len(blocks)}, {space.numel}], got k={k}")
        self._blocks: list[LinearBlock] = blocks
        self.maps_: dict[str, tuple[Tensor, Tensor]] = {}
        self.layer_scales_: dict[str, float] = {}
        for b, share in zip(blocks, split_largest_remainder(k, [b.size for b in blocks])):
            k_d, k_a = rectangle(share, b.out, b.d_a)
            PD = torch.randn(b.out, k_d, generator=generator(self.seed, self.name, b.name, "D"), dtype=torch.float64)
            PA = torch.randn(b.d_a, k_a, generator=generator(self.seed, self.name, b.name, "A"), dtype=torch.float64)
            self.maps_[b.name], self.layer_scales_[b.name] = (PD, PA), 1 / math.sqrt(k_d * k_a)
        self.k_ = sum(PD.shape[1] * PA.shape[1] for PD, PA in self.maps_.values())

    def _apply(self, G: Tensor) -> Tensor:
        parts = []
        for b in self._blocks:
            PD, PA = (t.to(G.device, G.dtype) for t in self.maps_[b.name])
            Z = PD.T @ b.matrix(G) @ PA  # [B, k_d, k_a]
            parts.append(Z.reshape(G.shape[0], -1) * self.layer_scales_[b.name])
        return torch.cat(parts, 1)

    def _apply_factors(self, layers: list[FactorLayer], factors: Factors) -> Tensor:
        check_layers(self._blocks, layers, "FactoredGaussian")
        parts = []
        for b, (A, D) in zip(self._blocks, factors):
            PD, PA = (t.to(A.device, A.dtype) for t in self.maps_[b.name])
            if A.dim() == 3:  # tokens: Σ_t (D_t Φ_D)ᵀ (A_t Φ_A)
                Z = torch.einsum("btd,bta->bda", D @ PD, A @ PA)
            else:
                Z = (D @ PD)[:, :, None] * (A @ PA)[:, None, :]
            parts.append(Z.reshape(A.shape[0], -1) * self.layer_scales_[b.name])
        return torch.cat(parts, 1)

    def _scale(self) -> Any:
        return dict(self.layer_scales_) if getattr(self, "_fitted", False) else "1/sqrt(k_d k_a) per layer"

    def _state(self) -> list[Tensor]:
        return [t for pair in self.maps_.values() for t in pair] if getattr(self, "_fitted", False) else []
