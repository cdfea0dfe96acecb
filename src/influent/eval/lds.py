"""Linear datamodeling score (LDS): do summed scores rank the outcomes of retraining on random subsets?

For m seeded subsets S of size α·n, the model is retrained on S (warm start) and each query's loss
measured. Influence predicts that keeping only S changes the query loss by +Σ_{i∉S} score[q, i]/n
(removing helpful points raises it); LDS is the Spearman correlation of that prediction with the
actual loss across subsets, averaged over queries, so exact influence scores near +1. The noise
ceiling is the LDS of one retraining's outcomes against another's with a different seed.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..task import Task
from .loo import _values, query_losses, spearman
from .retrain import Retrainer


@dataclass
class LDSResult:
    """LDS `value` (mean over queries) with everything that produced it."""

    value: float
    per_query: Tensor   # [n_query] Spearman across subsets
    subsets: Tensor     # [m, k] kept training indices
    predicted: Tensor   # [m, n_query] predicted measurement (or the first retraining's, for a ceiling)
    actual: Tensor      # [m, n_query] measured query loss after retraining on each subset
    grad_norms: Tensor  # [m] (or [2, m] for a ceiling) final ‖∇R‖ of each retraining


def random_subsets(n: int, m: int, alpha: float, seed: int = 0) -> Tensor:
    """m seeded random subsets of round(α·n) of range(n), sorted: [m, k]."""
    check_lds_options(n, m, alpha)
    k = int(round(alpha * n))
    g = torch.Generator().manual_seed(int(seed))
    return torch.stack([torch.randperm(n, generator=g)[:k].sort().values for _ in range(m)])


def check_lds_options(n: int, m: int, alpha: float) -> None:
    """α ∈ (0, 1) with 1 ≤ α·n < n, m ≥ 3 (error), m ≥ 10 (else a warning)."""
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise InputError(f"alpha must lie strictly between 0 and 1 (the fraction of training data kept), got {alpha!r}")
    k = int(round(alpha * n))
    if not 1 <= k < n:
        raise InputError(f"alpha={alpha} keeps {k} of {n} training examples; choose alpha so that 1 <= alpha·n < n")
    if not isinstance(m, int) or m < 3:
        raise InputError(f"m={m!r} subsets cannot give a rank correlation; use m >= 10 (50 or more for a stable LDS)")
    if m < 10:
        warnings.warn(f"LDS over m={m} subsets is not a meaningful correlation (use m >= 10, ideally 50+)",
                      UserWarning, stacklevel=4)


def _per_query(a: Tensor, b: Tensor) -> Tensor:
    return torch.tensor([spearman(a[:, q], b[:, q]) for q in range(a.shape[1])], dtype=torch.float64)


def _mean(per_query: Tensor) -> float:
    ok = ~torch.isnan(per_query)
    return float(per_query[ok].mean()) if bool(ok.any()) else float("nan")


def lds(scores: Any, model: nn.Module, task: Task, train: Any, query: Any, weight_decay: float, m: int = 50,
        alpha: float = 0.5, seed: int = 0, *, retrainer: Retrainer | None = None, **retrain_options: Any) -> LDSResult:
    """LDS of `scores` ([n_query, n_train] or Scores) against retraining on m random α-subsets.

    `retrain_options` go to `Retrainer` (method, tol, max_iter, workers, progress, cache_dir, ...).
    """
    v = _values(scores)
    rt = retrainer or Retrainer(model, task, train, weight_decay, **retrain_options)
    n = rt.n_train
    if v.shape[1] != n:
        raise InputError(f"scores have {v.shape[1]} columns but there are {n} training examples")
    subsets = random_subsets(n, m, alpha, seed)
    before = query_losses(copy.deepcopy(model).cpu().double(), task, query)
    if v.shape[0] != before.shape[0]:
        raise InputError(f"scores have {v.shape[0]} rows but there are {before.shape[0]} queries")
    runs = rt.fit_many(list(subsets), labels=[f"subset {j}" for j in range(m)], description="LDS retraining",
                       _stacklevel=3)
    actual = torch.stack([query_losses(r.model, task, query) for r in runs])
    kept = torch.zeros(m, n, dtype=torch.float64)
    kept.scatter_(1, subsets, 1.0)
    predicted = before + (1.0 - kept) @ v.T / n   # [m, n_query]: removing helpful points raises the loss
    per_query = _per_query(predicted, actual)
    return LDSResult(_mean(per_query), per_query, subsets, predicted, actual,
                     torch.tensor([r.grad_norm for r in runs], dtype=torch.float64))


def noise_ceiling(model: nn.Module, task: Task, train: Any, query: Any, weight_decay: float, m: int = 50,
                  alpha: float = 0.5, seed: int = 0, *, ceiling_noise: float = 0.1,
                  init_states: Sequence[dict[str, Tensor]] | None = None, **retrain_options: Any) -> LDSResult:
    """The LDS that retraining itself reaches: each subset trained twice, outcomes correlated.

    The two runs start from the trained model plus seeded N(0, ceiling_noise²) noise, or, with
    `init_states=(a, b)`, cold from two initialisations. The subsets are those `lds` uses for the
    same (m, alpha, seed). On a convex objective both runs find the same optimum: ceiling ≈ 1.
    """
    if init_states is not None:
        if len(init_states) != 2:
            raise InputError("init_states must be two state_dicts (two initialisations)")
        opts = {**retrain_options, "warm_start": False}
        trainers = [Retrainer(model, task, train, weight_decay, init_state=s, **opts) for s in init_states]
        noise = 0.0
    else:
        if not ceiling_noise > 0:
            raise InputError(f"ceiling_noise must be > 0 (or pass init_states), got {ceiling_noise!r}")
        trainers = [Retrainer(model, task, train, weight_decay, **retrain_options)] * 2
        noise = float(ceiling_noise)
    n = trainers[0].n_train
    subsets = random_subsets(n, m, alpha, seed)
    outcomes, norms = [], []
    for r, rt in enumerate(trainers):
        seeds = [int(seed) * 1_000_003 + 2 * j + r + 1 for j in range(m)]
        runs = rt.fit_many(list(subsets), noise=noise, seeds=seeds, description=f"noise ceiling (run {r + 1}/2)",
                           labels=[f"subset {j} run {r + 1}" for j in range(m)], _stacklevel=3)
        outcomes.append(torch.stack([query_losses(x.model, task, query) for x in runs]))
        norms.append(torch.tensor([x.grad_norm for x in runs], dtype=torch.float64))
    per_query = _per_query(outcomes[0], outcomes[1])
    return LDSResult(_mean(per_query), per_query, subsets, outcomes[0], outcomes[1], torch.stack(norms))
