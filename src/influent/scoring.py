"""The functional core of scoring: gradient blocks, preconditioned queries, blockwise products.

`Attributor` wires these together; they are usable on their own with any solver and any
source of gradient blocks (in memory, recomputed from the model, or read from a store).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor

from .errors import InputError
from .grads import ModelFunction
from .inputs import Examples
from .progress import track
from .scores import StreamingTopK
from .solvers.base import Solver



def block_rows(n_params: int, itemsize: int, batch_size: int, budget_bytes: int = 256 * 2**20) -> int:
    """Examples per gradient block so one block of flat gradients fits in `budget_bytes`."""
    return max(1, min(batch_size, budget_bytes // max(1, n_params * itemsize)))


def gradient_blocks(fn: ModelFunction, examples: Examples, rows: int, query: bool = False,
                    progress: bool = False, label: str = "gradients") -> Iterator[tuple[int, Tensor]]:
    """Per-example flat gradients in blocks of `rows`, with their offset in the example order."""
    n_blocks = -(-len(examples) // rows)
    offset = 0
    for _, batch in track(examples.batches(rows), n_blocks, label, progress):
        g = fn.per_example_grads(batch, query=query)
        yield offset, g
        offset += g.shape[0]


def all_gradients(fn: ModelFunction, examples: Examples, rows: int, query: bool = False,
                  progress: bool = False, label: str = "gradients") -> Tensor:
    """All per-example gradients [n, P] (only for sizes that fit in memory)."""
    return torch.cat([g for _, g in gradient_blocks(fn, examples, rows, query, progress, label)])


def precondition(solver: Solver, G: Tensor) -> Tensor:
    """Rows of G mapped through (H + λI)⁻¹: [m, P] -> [m, P]."""
    return solver.solve(G.T).T.to(G.dtype)


BlockScorer = Callable[[Any], Tensor]  # one training block (flat gradients or factors) -> [n_query, b]


def score_matrix(score_block: BlockScorer, blocks: Iterable[tuple[int, Any]], n_train: int) -> Tensor:
    """values[:, offset:offset+b] = score_block(block) over streamed training blocks."""
    out = None
    for offset, block in blocks:
        v = score_block(block)
        if out is None:
            out = torch.empty(v.shape[0], n_train, dtype=v.dtype, device=v.device)
        out[:, offset: offset + v.shape[1]] = v
    assert out is not None
    return out


def score_top_k(score_block: BlockScorer, blocks: Iterable[tuple[int, Any]], k: int,
                largest: bool = True) -> tuple[Tensor, Tensor]:
    """Top-k per query without ever holding the n_query × n_train matrix."""
    if k <= 0:
        raise InputError(f"k must be a positive integer, got {k}")
    heap = None
    for offset, block in blocks:
        v = score_block(block)
        if heap is None:
            heap = StreamingTopK(v.shape[0], k, largest=largest, dtype=v.dtype)
        heap.update(v, offset)
    assert heap is not None
    return heap.result()


def self_scores(solver: Solver, blocks: Iterable[tuple[int, Tensor]], n_train: int) -> Tensor:
    """g_iᵀ (H + λI)⁻¹ g_i for every training example, one block of solves at a time."""
    out = None
    for offset, G in blocks:
        s = (precondition(solver, G) * G).sum(1)
        if out is None:
            out = torch.empty(n_train, dtype=s.dtype, device=s.device)
        out[offset: offset + G.shape[0]] = s
    assert out is not None
    return out
