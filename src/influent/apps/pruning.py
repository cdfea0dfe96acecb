"""Selective removal during training (PAPERS.md §4): every E epochs, aggregate influence on a
validation split; drop the most harmful training points (S_V(i) < 0), within caps per round, per
class and overall; keep training on the rest. `select="random"` removes the same counts at random,
the control the paper asks for; a cap of 0 is plain training, bit for bit.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..attributor import Attributor
from ..errors import InputError
from ..inputs import as_examples
from ..params import select_params
from ..progress import Bar
from ..task import Task, index_batch
from ..train import objective
from .memorization import _labels_of, check_heldout, refit

SELECT = ("influence", "random", "none")


@dataclass
class PruningResult:
    """The trained model, which points were kept, what each round removed, and the cost in sample-passes."""

    model: nn.Module
    kept: Tensor                    # [n] bool, after the last round
    removed: list[Tensor]           # per round: removed training positions, most harmful first
    rounds: list[dict] = field(default_factory=list)  # epoch, n_removed, n_harmful, n_kept
    sample_passes: int = 0          # Σ over epochs of the examples trained on

    @property
    def counts(self) -> list[int]:
        """Points removed at each round (pass to a `select="random"` run for an equal-size control)."""
        return [int(r.numel()) for r in self.removed]


def _cap(value: int | float, n: int, name: str) -> int:
    """A cap given as a count (int) or a fraction of the training set (float in [0, 1)) -> a count < n."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InputError(f"{name} must be a count (int >= 0) or a fraction in [0, 1), got {value!r}")
    count = int(value) if isinstance(value, int) else int(round(float(value) * n))
    if count >= n or (isinstance(value, float) and value >= 1):
        raise InputError(f"{name}={value!r} allows removing {count} of {n} training points; "
                         "a cap must leave data to train on (use a count < n or a fraction < 1)")
    return count


def _check(epochs: int, every: int, warmup: int, select: str, counts: Sequence[int] | None) -> None:
    for name, v in (("epochs", epochs), ("every", every)):
        if not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise InputError(f"warmup must be an integer >= 0, got {warmup!r}")
    if select not in SELECT:
        raise InputError(f"unknown select {select!r}; choose one of {', '.join(SELECT)}")
    if counts is not None and select != "random":
        raise InputError("counts= fixes how many points each round removes; it is only for select='random'")


def schedule(epochs: int, every: int, warmup: int) -> list[int]:
    """Epochs after which a removal round runs: warmup, warmup + every, … (< epochs)."""
    start = warmup if warmup > 0 else every
    return list(range(start, epochs, every))


def _harmful_order(aggregate: Tensor, live: Tensor) -> Tensor:
    """Positions (into the full set) of live points with negative aggregate, most harmful first."""
    pos = live.nonzero().flatten()
    agg = aggregate[pos].double()
    neg = pos[agg < 0]
    return neg[torch.argsort(agg[agg < 0], stable=True)]


def _apply_caps(order: Tensor, budget: int, labels: Tensor | None, per_class_left: dict[int, int] | None) -> Tensor:
    chosen = []
    for j in order.tolist():
        if len(chosen) >= budget:
            break
        if per_class_left is not None and labels is not None:
            c = int(labels[j])
            if per_class_left.get(c, 0) <= 0:
                continue
            per_class_left[c] -= 1
        chosen.append(j)
    return torch.tensor(chosen, dtype=torch.long)


def train_epochs(model: nn.Module, task: Task, data: Any, live: Tensor, epochs: int, optimizer: torch.optim.Optimizer,
                 generator: torch.Generator, batch_size: int, weight_decay: float) -> int:
    """Minibatch epochs over the live points (seeded shuffles); returns the sample-passes done."""
    passes = 0
    idx = live.nonzero().flatten()
    model.train()
    for _ in range(epochs):
        perm = idx[torch.randperm(idx.numel(), generator=generator)]
        for s in range(0, perm.numel(), batch_size):
            batch = index_batch(data, perm[s: s + batch_size])
            optimizer.zero_grad()
            objective(model, task, batch, weight_decay).backward()
            optimizer.step()
        passes += idx.numel()
    model.eval()
    return passes


def prune(model: nn.Module, train: Any, val: Any, *, task: Task | None = None, epochs: int = 30, every: int = 5,
          warmup: int = 5, cap_round: int | float = 0.1, cap_total: int | float = 0.2,
          cap_per_class: float | None = None, select: str = "influence", counts: Sequence[int] | None = None,
          params: Any = "last", curvature: str = "ggn", damping: float = 1e-3, weight_decay: float = 1e-3,
          lr: float = 1e-3, batch_size: int = 128, seed: int = 0, refit_params: bool = False,
          progress: bool = False) -> PruningResult:
    """Train a copy of `model` with Adam, removing harmful training points every `every` epochs.

    Influence is aggregated over `val` with an Attributor(params, curvature, direct solve, damping)
    fitted on the points still kept; caps are counts or fractions of the original training set.
    `refit_params=True` scores each round on a copy whose attributed `params` are first refit by
    full-batch L-BFGS on the kept points (`memorization.refit`: ‖∇R‖ ≈ 0 there, as influence assumes);
    training continues from the model as Adam left it.
    """
    task = task or Task.classification()
    _check(epochs, every, warmup, select, counts)
    examples = as_examples(train, name="train")
    n = len(examples)
    budget_round, budget_total = _cap(cap_round, n, "cap_round"), _cap(cap_total, n, "cap_total")
    if select == "influence":
        check_heldout(val, "validation set")
        select_params(model, params)  # an unknown layer name fails here, before any training
    labels = _labels_of(examples.data)
    per_class = None
    if cap_per_class is not None:
        if labels is None or not 0 <= cap_per_class < 1:
            raise InputError("cap_per_class needs integer labels in the training data and a fraction in [0, 1)")
        per_class = {int(c): int(cap_per_class * int((labels == c).sum())) for c in torch.unique(labels)}
    rounds_at = schedule(epochs, every, warmup)
    if counts is not None and len(counts) != len(rounds_at):
        raise InputError(f"counts has {len(counts)} entries but there are {len(rounds_at)} rounds at epochs {rounds_at}")
    plan = _Plan(rounds_at, budget_round, budget_total, labels, per_class)
    with torch.random.fork_rng():  # a seeded global state for models with dropout, restored afterwards
        torch.manual_seed(seed)
        return _run(model, task, examples, val, plan, select=select, counts=counts, params=params,
                    curvature=curvature, damping=damping, weight_decay=weight_decay, lr=lr, batch_size=batch_size,
                    seed=seed, progress=progress, epochs=epochs, refit_params=refit_params)


@dataclass(frozen=True)
class _Plan:
    """When rounds run and how much each may remove (validated in `prune`)."""

    rounds_at: list[int]
    budget_round: int
    budget_total: int
    labels: Tensor | None
    per_class: dict[int, int] | None


def _influence_order(net: nn.Module, task: Task, data: Any, live: Tensor, val: Any, params: Any, curvature: str,
                     damping: float, seed: int, weight_decay: float | None = None) -> tuple[Tensor, float | None]:
    """Live positions with negative mean validation influence, most harmful first, and the refit's ‖∇R‖.

    With `weight_decay` set, the attributed parameters of a copy of `net` are refit first (L-BFGS).
    """
    pos = live.nonzero().flatten()
    gnorm = None
    if weight_decay is not None:
        net, gnorm = refit(net, task, index_batch(data, pos), params, weight_decay)
    attr = Attributor(net, task, params=params, curvature=curvature, solver="direct", damping=damping,
                      seed=seed).fit(index_batch(data, pos))
    aggregate = torch.zeros(live.numel(), dtype=torch.float64)
    aggregate[pos] = attr.summed_score(val).double() / len(as_examples(val))
    return _harmful_order(aggregate, live), gnorm


def _run(model: nn.Module, task: Task, examples: Any, val: Any, plan: _Plan, *, select: str,
         counts: Sequence[int] | None, params: Any, curvature: str, damping: float, weight_decay: float, lr: float,
         batch_size: int, seed: int, progress: bool, epochs: int, refit_params: bool = False) -> PruningResult:
    net = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(int(seed))
    pick = torch.Generator().manual_seed(int(seed) + 7919)  # random removal draws from its own stream
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    live = torch.ones(len(examples), dtype=torch.bool)
    per_class = dict(plan.per_class) if plan.per_class is not None else None
    removed, rounds, passes, done, total_left = [], [], 0, 0, plan.budget_total
    with Bar(epochs, "pruning", progress) as bar:
        for r, at in enumerate(plan.rounds_at + [epochs]):
            passes += train_epochs(net, task, examples.data, live, at - done, opt, gen, batch_size, weight_decay)
            bar.advance(at - done, note=f"{int(live.sum())} kept")
            done = at
            if at == epochs or select == "none":
                continue
            budget = min(plan.budget_round, total_left)
            if select == "influence":
                order, gnorm = _influence_order(net, task, examples.data, live, val, params, curvature, damping, seed,
                                                weight_decay if refit_params else None)
                n_harmful = int(order.numel())
            else:
                pos = live.nonzero().flatten()
                budget = min(int(counts[r]), int(pos.numel()) - 1) if counts is not None else budget
                order, n_harmful, gnorm = pos[torch.randperm(pos.numel(), generator=pick)], -1, None
            gone = _apply_caps(order, budget, plan.labels, per_class)
            live[gone] = False
            total_left -= int(gone.numel())
            removed.append(gone)
            rounds.append({"epoch": at, "n_removed": int(gone.numel()), "n_harmful": n_harmful,
                           "n_kept": int(live.sum()), **({"refit_grad_norm": gnorm} if gnorm is not None else {})})
    return PruningResult(net, live, removed, rounds, passes)
