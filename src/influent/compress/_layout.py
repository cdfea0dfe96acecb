"""Where each Linear layer's [W | b] gradient matrix lives in the flat vector, for neuron-level maps.

A layer's per-example gradient is the [out, d_a] matrix D_iᵀ A_i whose columns are the d_in
weight inputs followed by the bias (column d_in); a transposed block (transformers' Conv1D) stores
its weight [d_in, out] in the flat vector. Blocks come from `plan_factors` layers when
given, else from the parameter names and shapes alone (a 2-D `.weight`, optionally its `.bias`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from ..factors import FactorLayer
from ..params import ParamSpace


@dataclass(frozen=True)
class LinearBlock:
    """One Linear layer's entries: output rows, input columns (weight then bias) and flat offsets."""

    name: str
    weight: str | None
    bias: str | None
    out: int
    d_in: int  # weight columns (0 when the weight is not selected)
    w_offset: int
    b_offset: int
    transposed: bool = False

    @property
    def d_a(self) -> int:
        return self.d_in + (1 if self.bias else 0)

    @property
    def size(self) -> int:
        return self.out * self.d_a

    def flat_index(self, o: Tensor, j: Tensor) -> Tensor:
        """Flat coordinates of entries (o, j) of the [out, d_a] matrix (broadcasting)."""
        w = self.w_offset + (j * self.out + o if self.transposed else o * self.d_in + j)
        b = self.b_offset + o + 0 * j
        if self.bias is None:
            return w
        return b if self.weight is None else torch.where(j < self.d_in, w, b)

    def coords(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For flat coordinates idx: (mask of those in this layer, their rows o, their columns j)."""
        in_w = (idx >= self.w_offset) & (idx < self.w_offset + self.out * self.d_in) if self.weight \
            else torch.zeros_like(idx, dtype=torch.bool)
        in_b = (idx >= self.b_offset) & (idx < self.b_offset + self.out) if self.bias \
            else torch.zeros_like(idx, dtype=torch.bool)
        rel = idx - self.w_offset
        w_o, w_j = (rel % self.out, rel // self.out) if self.transposed else \
            (rel // max(self.d_in, 1), rel % max(self.d_in, 1))
        o = torch.where(in_w, w_o, idx - self.b_offset)
        j = torch.where(in_w, w_j, torch.full_like(idx, self.d_in))
        mask = in_w | in_b
        return mask, o[mask], j[mask]

    def matrix(self, G: Tensor) -> Tensor:
        """This layer's gradient matrices [B, out, d_a] gathered from flat gradients [B, P]."""
        B = G.shape[0]
        parts = []
        if self.weight:
            W = G[:, self.w_offset: self.w_offset + self.out * self.d_in]
            parts.append(W.reshape(B, self.d_in, self.out).transpose(1, 2) if self.transposed
                         else W.reshape(B, self.out, self.d_in))
        if self.bias:
            parts.append(G[:, self.b_offset: self.b_offset + self.out, None])
        return torch.cat(parts, -1)

    def matches(self, layer: FactorLayer) -> bool:
        return (layer.name, layer.weight, layer.bias, layer.out, layer.d_a, layer.transposed) == \
            (self.name, self.weight, self.bias, self.out, self.d_a, self.transposed)


def _unsupported(what: str, names: list[str]) -> InputError:
    return InputError(
        f"{what} needs every selected parameter to be an nn.Linear weight (with its optional bias); not "
        f"supported: {', '.join(names)}. Use the element level / a flat compressor, select only Linear "
        "layers with params=[...], or pass layers=plan_factors(model, space) to fit")


def linear_blocks(space: ParamSpace, layers: list[FactorLayer] | None, what: str) -> list[LinearBlock]:
    """The Linear blocks covering `space`, or InputError naming the parameters that are not Linear."""
    offset = dict(zip(space.names, space.offsets))
    shape = dict(zip(space.names, space.shapes))
    if layers is not None:
        blocks, covered = [], set()
        for l in layers:
            for n in (l.weight, l.bias):
                if n and n not in offset:
                    raise InputError(f"layer {l.name!r} names parameter {n!r}, which is not in the selection "
                                     f"{list(space.names)}; use plan_factors on the same selection")
            covered.update(n for n in (l.weight, l.bias) if n)
            blocks.append(LinearBlock(l.name, l.weight, l.bias, l.out, l.d_in if l.weight else 0,
                                      offset.get(l.weight, 0), offset.get(l.bias, 0), l.transposed))
        missing = [n for n in space.names if n not in covered]
        if missing:
            raise _unsupported(what, missing)
        return blocks
    groups: dict[str, dict[str, str]] = {}
    for n in space.names:
        path, _, attr = n.rpartition(".")
        groups.setdefault(path, {})[attr] = n
    blocks, bad = [], []
    for path, g in groups.items():
        w, b = g.get("weight"), g.get("bias")
        ok = set(g) <= {"weight", "bias"} and w is not None and len(shape[w]) == 2 and \
            (b is None or tuple(shape[b]) == (shape[w][0],))
        if not ok:
            bad.extend(g.values())
            continue
        out, d_in = shape[w]
        blocks.append(LinearBlock(path, w, b, int(out), int(d_in), offset[w], offset.get(b, 0)))
    if bad:
        raise _unsupported(what, bad)
    return blocks


def check_layers(blocks: list[LinearBlock], layers: list[FactorLayer], what: str) -> None:
    """Refuse factors of layers other than the ones the map was drawn for."""
    if len(blocks) != len(layers) or not all(b.matches(l) for b, l in zip(blocks, layers)):
        raise InputError(f"{what} was fitted for layers {[b.name for b in blocks]} with other shapes or order "
                         f"than the factors' layers {[l.name for l in layers]}; "
                         "use the same plan_factors(model, space)")
