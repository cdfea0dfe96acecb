"""Influence in a compressed gradient space: rows C(g_i) and the curvature of compressed gradients.

score_C(q, i) = C(g_q)ᵀ (H_C + λI)⁻¹ C(g_i), where H_C is the mean outer product of compressed
(pseudo-)gradients: the empirical Fisher with the true labels, the true Fisher with sampled
labels, or the GGN through the columns of the output-Hessian square root. H_C is k × k, so
every solver of the core engine (direct in float64, CG, LiSSA, Arnoldi) runs on it unchanged.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor
from torch.func import grad, vmap

from .curvature import DenseOperator, Identity, LinearOperator
from .errors import InputError
from .factors import FactorLayer, NotFactorable, factor_batch
from .grads import ModelFunction, _unsqueeze
from .inputs import Examples
from .progress import track
from .task import batch_size_of, sampled_output_grads

COMPRESSED_CURVATURES = ("ggn", "fisher", "empirical_fisher", "identity")


def compressed_rows(fn: ModelFunction, compressor, layers: list[FactorLayer] | None, batch,
                    query: bool = False) -> Tensor:
    """C(g) for every example of a batch: from Linear-layer factors when the compressor can, else flat."""
    if layers is not None and getattr(compressor, "factored", False):
        try:
            return compressor.apply_factors(layers, factor_batch(fn, layers, batch, query, sequence=True))
        except NotFactorable:
            pass
    return compressor.apply(fn.per_example_grads(batch, query=query))


def compressed_blocks(fn: ModelFunction, compressor, layers, examples: Examples, rows: int, query: bool = False,
                      progress: bool = False, label: str = "compressed gradients") -> Iterator[tuple[int, Tensor]]:
    offset = 0
    for _, batch in track(examples.batches(rows), -(-len(examples) // rows), label, progress):
        block = compressed_rows(fn, compressor, layers, batch, query)
        yield offset, block
        offset += block.shape[0]


def pseudo_grads(fn: ModelFunction, batch, r: Tensor) -> Tensor:
    """Per-example Jᵢᵀ rᵢ, the gradient the loss would have for output-space vector rᵢ: [B, P]."""

    def one(p, example, ri):
        out = fn.outputs(p, _unsqueeze(example))
        return (out.reshape(-1) * ri).sum()

    return fn.space.flatten(vmap(grad(one), in_dims=(None, 0, 0))(fn.params, batch, r), batch_dims=1)


def _output_vectors(kind: str, fn: ModelFunction, batch, start: int, seed: int) -> list[Tensor]:
    """The output-space vectors whose pseudo-gradients' outer products average to the curvature."""
    with torch.no_grad():
        out = fn.outputs(fn.params, batch)
    if kind == "fisher":
        return [sampled_output_grads(fn.task, out, batch, seed, start)]
    L = fn.task.output_hessian_sqrt(out, batch)  # GGN: H_out = L Lᵀ, one vector per column of L
    return [L[..., j].reshape(out.shape[0], -1) for j in range(L.shape[-1])]


def compressed_curvature(kind: str, fn: ModelFunction, compressor, layers, examples: Examples,
                         batch_size: int, seed: int = 0, progress: bool = False, start: int = 0) -> LinearOperator:
    """H_C = (1/n) Σ C(v) C(v)ᵀ over the (pseudo-)gradients v of the curvature set: a k × k operator.

    `start` is the global position of the first example (a distributed rank's shard) for sampled labels."""
    k = compressor.k_
    p0 = next(iter(fn.params.values()))
    if kind == "identity":
        return Identity(k, p0.dtype, p0.device)
    if kind not in COMPRESSED_CURVATURES:
        raise InputError(f"curvature={kind!r} cannot be restricted to compressed gradients; use one of "
                         f"{', '.join(COMPRESSED_CURVATURES)} with compress=, or compress=None")
    if kind in ("ggn", "fisher") and fn.task.output_hessian_sqrt is None:
        raise InputError(f"curvature={kind!r} needs Task.classification() or Task.regression(); "
                         "use 'empirical_fisher' for a custom task")
    if kind == "empirical_fisher":
        return rows_second_moment(compressed_blocks(fn, compressor, layers, examples, batch_size, progress=progress,
                                                    label="compressed curvature"), p0.dtype)
    H = torch.zeros(k, k, dtype=torch.float64, device=p0.device)
    for _, batch in track(examples.batches(batch_size), -(-len(examples) // batch_size),
                          "compressed curvature", progress):
        for r in _output_vectors(kind, fn, batch, start, seed):
            rows = compressor.apply(pseudo_grads(fn, batch, r)).double()
            H += rows.T @ rows
        start += batch_size_of(batch)
    return DenseOperator((H / len(examples)).to(p0.dtype))


def rows_second_moment(blocks: Iterable[tuple[int, Tensor]], dtype: torch.dtype) -> DenseOperator:
    """(1/n) Σ r rᵀ over (offset, rows [b, k]) blocks, accumulated in float64: the empirical Fisher of the rows."""
    H, n = None, 0
    for _, rows in blocks:
        r = rows.double()
        H = r.T @ r if H is None else H.addmm_(r.T, r)
        n += r.shape[0]
    if H is None:
        raise InputError("no rows to build the curvature from: the training set is empty")
    return DenseOperator((H / n).to(dtype))
