"""Which training examples build the curvature (PAPERS.md §3). A sampler returns sorted positions into the train set.

`Random` draws uniformly; `FeatureBased` stratifies by k-means clusters of penultimate-layer
embeddings; `LogitBased` stratifies by predicted class × quantile bins of confidence or entropy.
Both stratified samplers allocate the budget proportionally to stratum size (largest remainder,
redistributing what a short stratum cannot take) and pick at random inside a stratum, so that a
budget equal to the data returns every example and the curvature is the unsampled one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InputError
from .inputs import Examples

SAMPLERS = ("random", "feature", "logit")
DEFAULT_FRACTION = 0.1   # a sampler given by name uses 10 % of the training set ...
DEFAULT_MINIMUM = 1000   # ... but at least this many examples (all of them when the set is smaller)
LOGIT_SCORES = ("confidence", "entropy", "margin")
FORWARD_BATCH = 1024


def default_budget(total: int) -> int:
    """The budget of a sampler named by string: max(10 % of the data, 1,000), capped at the data size."""
    return min(total, max(DEFAULT_MINIMUM, math.ceil(DEFAULT_FRACTION * total)))


def _check_n(n: Any, who: str) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise InputError(f"{who} budget n={n!r} must be a positive integer (number of curvature examples)")


def _budget(n: int | None, total: int, who: str) -> int:
    n = default_budget(total) if n is None else n
    if n > total:
        raise InputError(f"{who} budget n={n} exceeds the {total} training examples; pass n <= {total} "
                         "(or sampler=None to use them all)")
    return n


# ----- allocation: a budget spread over strata ------------------------------------------------
def allocate(sizes: list[int], n: int) -> list[int]:
    """Proportional allocation of n over strata of the given sizes (largest remainder), never above a size.

    What a stratum cannot take is redistributed proportionally over those with room left.
    """
    counts = [0] * len(sizes)
    left = n
    while left > 0:
        room = [i for i, s in enumerate(sizes) if s > counts[i]]
        total = sum(sizes[i] for i in room)
        quota = {i: left * sizes[i] / total for i in room}
        add = {i: min(int(quota[i]), sizes[i] - counts[i]) for i in room}
        rest = left - sum(add.values())
        # largest remainders first, ties by stratum index (deterministic)
        for i in sorted(room, key=lambda i: (-(quota[i] - int(quota[i])), i)):
            if rest == 0:
                break
            if counts[i] + add[i] < sizes[i]:
                add[i] += 1
                rest -= 1
        for i, a in add.items():
            counts[i] += a
        left -= sum(add.values())
    return counts


def stratified(labels: Tensor, n: int, generator: torch.Generator) -> list[int]:
    """n positions drawn at random inside strata (`labels` [N] ints), allocated proportionally."""
    strata = torch.unique(labels).tolist()
    members = [(labels == s).nonzero().flatten() for s in strata]
    counts = allocate([len(m) for m in members], n)
    chosen = [m[torch.randperm(len(m), generator=generator)[:c]] for m, c in zip(members, counts) if c]
    return sorted(torch.cat(chosen).tolist())


# ----- model read-outs ------------------------------------------------------------------------
def penultimate_module(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module, bool]:
    """(name, module, use_input): the module whose input (the last nn.Linear) or output (`layer`) is the embedding."""
    if layer is not None:
        names = dict(model.named_modules())
        if layer not in names:
            raise InputError(f"FeatureBased layer={layer!r} is not a module of the model; pick one of "
                             f"{', '.join(n for n in list(names)[1:13] if n)}")
        return layer, names[layer], False
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError("FeatureBased cannot find a penultimate layer (the model has no nn.Linear output layer); "
                         "pass FeatureBased(n, clusters, layer='<module name>') naming the module whose output "
                         "is the embedding")
    name, module = linears[-1]
    return name, module, True


@torch.no_grad()
def embeddings(examples: Examples, fn, layer: str | None = None) -> Tensor:
    """Penultimate-layer activations [N, d] (input of the last nn.Linear, or output of `layer`), eval mode."""
    _, module, use_input = penultimate_module(fn.model, layer)
    captured: list[Tensor] = []

    def hook(mod, inputs, output):
        t = inputs[0] if use_input else output
        captured.append(t.detach().reshape(t.shape[0], -1) if t.dim() != 3 else t.detach().mean(1))

    handle = module.register_forward_hook(hook)
    try:
        for _, batch in examples.batches(FORWARD_BATCH):
            fn.outputs(fn.params, batch)
    finally:
        handle.remove()
    if len(captured) != -(-len(examples) // FORWARD_BATCH):
        raise InputError("FeatureBased: the embedding layer was called more than once per forward pass; "
                         "pass layer='<module name>' naming a module called once")
    return torch.cat(captured).to(torch.float64)


@torch.no_grad()
def logits(examples: Examples, fn) -> Tensor:
    """Model outputs [N, C] in eval mode, float64."""
    return torch.cat([fn.outputs(fn.params, b).to(torch.float64) for _, b in examples.batches(FORWARD_BATCH)])


def kmeans(X: Tensor, k: int, generator: torch.Generator, iters: int = 50) -> Tensor:
    """Cluster labels [N] by Lloyd's k-means with k-means++ seeding (seeded, float64)."""
    N = X.shape[0]
    k = min(k, N)
    centers = X[torch.randint(N, (1,), generator=generator)]
    d2 = torch.cdist(X, centers).square().min(1).values
    for _ in range(1, k):
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1 / N)
        nxt = X[torch.multinomial(p, 1, generator=generator)]
        centers = torch.cat([centers, nxt])
        d2 = torch.minimum(d2, torch.cdist(X, nxt).square().squeeze(1))
    labels = torch.cdist(X, centers).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(centers).index_add_(0, labels, X)
        counts = torch.bincount(labels, minlength=k).to(X.dtype)
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
        new = torch.cdist(X, centers).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def quantile_bins(values: Tensor, bins: int) -> Tensor:
    """Bin index in [0, bins) by rank (equal-count quantile bins; ties broken by position)."""
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(values))
    return (ranks * bins) // max(len(values), 1)


# ----- samplers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Random:
    """n examples drawn uniformly without replacement (seeded); n=None: the default budget."""

    n: int | None = None

    def __post_init__(self):
        _check_n(self.n, "Random")

    def select(self, examples: Examples, fn=None, seed: int = 0) -> list[int]:
        total = len(examples)
        n = _budget(self.n, total, "Random")
        g = torch.Generator().manual_seed(seed)
        return sorted(torch.randperm(total, generator=g)[:n].tolist())


@dataclass(frozen=True)
class FeatureBased:
    """Stratified by seeded k-means on standardised penultimate-layer embeddings (default K = model outputs).

    `layer` names a module whose output is the embedding; by default the input of the last nn.Linear.
    """

    n: int | None = None
    clusters: int | None = None
    layer: str | None = None

    def __post_init__(self):
        _check_n(self.n, "FeatureBased")
        if self.clusters is not None and (isinstance(self.clusters, bool) or not isinstance(self.clusters, int)
                                          or self.clusters < 1):
            raise InputError(f"FeatureBased clusters={self.clusters!r} must be a positive integer or None "
                             "(= number of model outputs)")

    def select(self, examples: Examples, fn, seed: int = 0) -> list[int]:
        total = len(examples)
        n = _budget(self.n, total, "FeatureBased")
        penultimate_module(fn.model, self.layer)  # refuse before the forward pass
        if n == total:
            return list(range(total))
        Z = embeddings(examples, fn, self.layer)
        Z = (Z - Z.mean(0)) / Z.std(0).clamp_min(1e-12) if total > 1 else Z
        k = self.clusters or int(logits(examples.subset([0]), fn).shape[1])
        g = torch.Generator().manual_seed(seed)
        return stratified(kmeans(Z, k, g), n, g)


@dataclass(frozen=True)
class LogitBased:
    """Stratified by predicted class × `bins` quantile bins (within each class) of confidence, entropy or margin."""

    n: int | None = None
    bins: int = 5
    by: str = "confidence"

    def __post_init__(self):
        _check_n(self.n, "LogitBased")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 1:
            raise InputError(f"LogitBased bins={self.bins!r} must be a positive integer")
        if self.by not in LOGIT_SCORES:
            raise InputError(f"LogitBased by={self.by!r}; choose one of {', '.join(LOGIT_SCORES)}")

    def select(self, examples: Examples, fn, seed: int = 0) -> list[int]:
        total = len(examples)
        n = _budget(self.n, total, "LogitBased")
        if n == total:
            return list(range(total))
        out = logits(examples, fn)
        if out.dim() != 2:
            raise InputError(f"LogitBased needs class logits [N, C]; the model returned {tuple(out.shape)}")
        p = out.softmax(1)
        top2 = p.topk(min(2, p.shape[1]), dim=1).values
        score = {"confidence": top2[:, 0],
                 "entropy": -(p * p.clamp_min(1e-300).log()).sum(1),
                 "margin": top2[:, 0] - (top2[:, 1] if p.shape[1] > 1 else 0)}[self.by]
        pred = out.argmax(1)
        strata = torch.empty(total, dtype=torch.long)
        for c in pred.unique():
            idx = (pred == c).nonzero().flatten()
            strata[idx] = int(c) * self.bins + quantile_bins(score[idx], self.bins)
        return stratified(strata, n, torch.Generator().manual_seed(seed))


def make_sampler(sampler: Any):
    """None (every training example), an int n (Random(n)), a name "random" | "feature" | "logit"
    (default budget: max(10 % of the data, 1,000)), or an object with `select(examples, fn, seed)`."""
    if sampler is None or hasattr(sampler, "select"):
        return sampler
    if isinstance(sampler, int) and not isinstance(sampler, bool):
        return Random(sampler)
    if isinstance(sampler, str) and sampler in SAMPLERS:
        return {"random": Random, "feature": FeatureBased, "logit": LogitBased}[sampler]()
    raise InputError(f"unknown sampler {sampler!r}; pass None, an integer budget, one of {', '.join(SAMPLERS)}, "
                     "or an object such as influent.sampling.LogitBased(n=1000)")
