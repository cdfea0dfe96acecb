"""torch.distributed support: each rank holds a contiguous shard of the training set.

Launched with ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on GPU). Every curvature that
is a mean over examples is the all-reduced sum of the ranks' shard means weighted by shard size
(`AllReduceMean`), so solvers run identically on every rank and each rank preconditions every
query itself: a matrix-free solve (CG, LiSSA) is a collective, so all ranks must solve the same
right-hand sides anyway. Each rank scores its shard; `gather_columns` / `merge_top_k` merge the
results in global order. Nothing here runs when torch.distributed is not initialised.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .curvature.operator import LinearOperator
from .errors import InputError

SHARDED_CURVATURES = ("hessian", "ggn", "fisher", "empirical_fisher")  # means over examples: all-reduce exactly


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n: int, rank: int, size: int) -> range:
    """Positions of rank's contiguous shard of n examples; the first n % size ranks get one more.

    More ranks than examples is fine: the last ranks get empty shards.
    """
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


@dataclass(frozen=True)
class Partition:
    """This rank's place in a sharded run: rank, size, the global training ids, and its shard of them."""

    rank: int
    size: int
    ids: tuple

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def positions(self) -> range:
        return shard(self.n, self.rank, self.size)

    def counts(self) -> list[int]:
        return [len(shard(self.n, r, self.size)) for r in range(self.size)]

    def store_dir(self, root: Any) -> str:
        """This rank's own gradient-store directory under `root`, so a rank that dies resumes alone."""
        return f"{root}/rank-{self.rank:05d}-of-{self.size:05d}"


def partition(ids: Sequence) -> Partition | None:
    """This rank's Partition of the training set, or None when not running distributed.

    Every rank must pass the same training set (same ids, same order); this is checked here,
    before any long work, and a mismatch raises InputError on every rank.
    """
    rank, size = world()
    if size == 1:
        return None
    digest = hashlib.sha256(repr(list(ids)).encode()).hexdigest()
    seen: list = [None] * size
    dist.all_gather_object(seen, (len(ids), digest))
    if len(set(seen)) != 1:
        sizes = ", ".join(f"rank {r}: {n}" for r, (n, _) in enumerate(seen))
        raise InputError(f"under torch.distributed every rank must pass the same training set (same ids, same "
                         f"order) and the library shards it; got different sets ({sizes} examples)")
    return Partition(rank, size, tuple(ids))


def check_curvature(curvature: Any) -> None:
    """Refuse curvatures that do not split into per-rank sums (K-FAC/EK-FAC average factors first)."""
    if isinstance(curvature, str) and curvature in ("kfac", "ekfac"):
        raise InputError(f"curvature={curvature!r} is not supported under torch.distributed yet (its Kronecker "
                         "factors are averaged before the product); use 'ggn', 'fisher', 'empirical_fisher' or "
                         "'hessian', or run it in one process")


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of t over ranks (on the backend's device), returned on t's device."""
    buf = t.to(_comm_device()).contiguous()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


class AllReduceMean(LinearOperator):
    """Mean-loss curvature over all ranks: Σ_r n_r · (local mean operator)_r / n, all-reduced.

    `local` is this rank's mean-over-shard operator, or None for an empty shard. Every rank must
    call `matmat`/`dense` with the same arguments in the same order (solvers do: same seed).
    """

    def __init__(self, local: LinearOperator | None, n_local: int, n_total: int, size: int,
                 dtype: torch.dtype, device: Any = "cpu"):
        super().__init__(size, dtype, device)
        self.local, self.n_local, self.n_total = local, int(n_local), int(n_total)

    def _matmat(self, V: Tensor) -> Tensor:
        part = self.local.matmat(V) * self.n_local if self.local is not None else torch.zeros_like(V)
        return all_reduce_sum(part) / self.n_total

    def dense(self, chunk: int = 256, dtype: torch.dtype | None = None) -> Tensor:
        """Sum of the ranks' weighted dense local matrices (each uses its fast dense path)."""
        self._check_dense_size()
        dtype = dtype or self.dtype
        part = (self.local.dense(chunk, dtype) * self.n_local if self.local is not None
                else torch.zeros(self.size, self.size, dtype=dtype, device=self.device))
        return all_reduce_sum(part) / self.n_total

    def describe(self) -> dict:
        inner = self.local.describe() if self.local is not None and hasattr(self.local, "describe") else {}
        return {**inner, "n": self.n_total, "ranks": world()[1], "size": self.size}


def _all_gather_rows(rows: Tensor, counts: list[int]) -> list[Tensor]:
    """Each rank's rows [counts[r], ...] (padded to the largest count for the collective)."""
    width = max(counts)
    buf = torch.zeros((width,) + tuple(rows.shape[1:]), dtype=rows.dtype, device=_comm_device())
    buf[: rows.shape[0]] = rows.to(buf.device)
    parts = [torch.empty_like(buf) for _ in counts]
    dist.all_gather(parts, buf)
    return [p[:c].to(rows.device) for p, c in zip(parts, counts)]


def gather_columns(values: Tensor, part: Partition) -> Tensor:
    """[n_query, n_local] blocks from every rank -> [n_query, n] in global training order."""
    return torch.cat(_all_gather_rows(values.T.contiguous(), part.counts())).T.contiguous()


def gather_vector(values: Tensor, part: Partition) -> Tensor:
    """[n_local] per-example values from every rank -> [n] in global training order."""
    return torch.cat(_all_gather_rows(values, part.counts()))


def merge_top_k(values: Tensor, indices: Tensor, part: Partition, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Merge each rank's local top-k (local indices) into the global top-k (global indices).

    Candidates are concatenated in rank order and stably sorted, so ties go to the earlier
    training example, as in the one-process StreamingTopK.
    """
    k_local = [min(k, c) for c in part.counts()]
    vals = _all_gather_rows(values.T.contiguous(), k_local)
    offsets = [shard(part.n, r, part.size).start for r in range(part.size)]
    inds = [i + o for i, o in zip(_all_gather_rows(indices.T.contiguous(), k_local), offsets)]
    V, I = torch.cat(vals).T, torch.cat(inds).T
    order = torch.sort(-V if largest else V, dim=1, stable=True).indices[:, : min(k, part.n)]
    return V.gather(1, order), I.gather(1, order)


def solve_is_local(solver: Any) -> bool:
    """Whether the fitted solver solves without touching the (collective) curvature operator."""
    from .solvers import Direct
    from .solvers.arnoldi import Arnoldi
    from .solvers.base import Identity
    return isinstance(solver, (Direct, Identity, Arnoldi))


def map_preconditioned(solver: Any, blocks: Iterable[tuple[int, Tensor]], width: int, dtype: torch.dtype,
                       fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """[n_local] values fn(P·G, G) over this rank's training blocks G, where P = (H + λI)⁻¹.

    A solver whose solve is a collective (CG, LiSSA) needs the same right-hand sides on every
    rank, so the ranks' blocks are all-gathered step by step and every rank solves them all.
    """
    from .scoring import precondition
    rank, size = world()
    out: list[Tensor] = []
    if solve_is_local(solver):
        out = [fn(precondition(solver, G), G) for _, G in blocks]
    else:
        mine = iter(blocks)
        while True:  # one step per block until every rank has run out (shards may differ by a block)
            step = next(mine, None)
            G = step[1] if step is not None else torch.zeros(0, width, dtype=dtype)
            counts_t = [torch.zeros(1, dtype=torch.int64, device=_comm_device()) for _ in range(size)]
            dist.all_gather(counts_t, torch.tensor([G.shape[0]], dtype=torch.int64, device=_comm_device()))
            counts = [int(c.item()) for c in counts_t]
            if sum(counts) == 0:
                break
            everyone = torch.cat(_all_gather_rows(G, counts))
            start = sum(counts[:rank])
            out.append(fn(precondition(solver, everyone)[start: start + G.shape[0]], G))
    return torch.cat(out) if out else torch.zeros(0, dtype=dtype)
