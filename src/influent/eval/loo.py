"""Leave-one-out retraining: the ground truth that influence scores predict (ΔL_q ≈ +score[q, i]/n).

Following PAPERS.md §5, a removal counts as "stable" when the retrained parameters moved no more
than twice the exact Newton-step prediction (`newton_step_norms`); larger moves mean the retraining jumped
to another minimum, where no local method can be right. Correlations are reported over all
removals and over the stable ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..inputs import as_examples
from ..scoring import all_gradients, gradient_blocks, precondition
from ..task import Task
from .retrain import Retrainer, _to64


def _values(scores: Any) -> Tensor:
    """A Scores object or a tensor -> the [n_query, n_train] float64 tensor."""
    v = scores if isinstance(scores, Tensor) else getattr(scores, "values", None)
    if not isinstance(v, Tensor) or v.dim() != 2:
        raise InputError("scores must be an influent Scores object or a [n_query, n_train] tensor")
    return v.detach().cpu().double()


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two equally long vectors (nan when either is constant)."""
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else float("nan")


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (ties share the mean rank), as scipy.stats.rankdata."""
    from scipy.stats import rankdata

    return torch.as_tensor(rankdata(x.double().flatten().numpy()), dtype=torch.float64)


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two equally long vectors."""
    return pearson(_ranks(a), _ranks(b))


def newton_step_norms(model: nn.Module, task: Task, train: Any, removed: Sequence[int], weight_decay: float) -> Tensor:
    """‖Δθ_i‖ predicted by one exact Newton step of the leave-i-out objective, for each removed i.

    Retraining minimises the *mean* loss over the n−1 kept examples, whose gradient at θ* is
    (ḡ − g_i)/(n−1) (ḡ = mean training gradient = −wd·θ* at the optimum), so the step is
    ‖(H+λI)⁻¹ (g_i − ḡ)‖ / (n−1) with the exact Hessian and λ = wd. (The bare ‖(H+λI)⁻¹ g_i‖/n
    misses the ḡ term and flags well-fit points, whose g_i ≈ 0, as unstable even when convex.)
    """
    from ..attributor import Attributor

    examples = as_examples(train, name="train")
    n, dtype = len(examples), next(model.parameters()).dtype
    attr = Attributor(model, task, curvature="hessian", solver="direct", damping=weight_decay).fit(examples)
    g_mean = sum(g.sum(0) for _, g in gradient_blocks(attr.fn_, examples.to(None, dtype), rows=256)) / n
    G = all_gradients(attr.fn_, examples.subset(list(removed)).to(None, dtype), rows=64)
    return precondition(attr.solver_, G - g_mean).norm(dim=1).double() / (n - 1)


@dataclass
class LOOResult:
    """Leave-one-out outcomes: `actual[q, j]` = query loss change when `removed[j]` is left out."""

    removed: list[int]
    n_train: int
    actual: Tensor          # [n_query, n_removed], query_loss(after) − query_loss(before)
    grad_norms: Tensor      # [n_removed] final ‖∇R‖ of each retraining
    delta_norms: Tensor     # [n_removed] ‖θ_{-i} − θ*‖
    predicted_norms: Tensor  # [n_removed] Newton-step ‖Δθ‖ (see newton_step_norms)
    unstable: Tensor        # [n_removed] bool: ‖Δθ‖ > 2 × predicted
    base_grad_norm: float   # ‖∇R‖ of the full-data retraining (the "before" model)

    def predicted(self, scores: Any) -> Tensor:
        """Predicted query loss changes scores[:, removed] / n, [n_query, n_removed]."""
        v = _values(scores)
        if v.shape[1] != self.n_train or v.shape[0] != self.actual.shape[0]:
            raise InputError(f"scores have shape {tuple(v.shape)}, expected "
                             f"({self.actual.shape[0]}, {self.n_train}) = (n_query, n_train)")
        return v[:, self.removed] / self.n_train

    def _corr(self, scores: Any, fn) -> dict[str, float]:
        p, stable = self.predicted(scores), ~self.unstable
        return {"all": fn(p, self.actual),
                "stable": fn(p[:, stable], self.actual[:, stable]) if int(stable.sum()) >= 2 else float("nan"),
                "n_stable": int(stable.sum())}

    def pearson(self, scores: Any) -> dict[str, float]:
        """Pearson(predicted, actual) over all (query, removal) pairs and over stable removals."""
        return self._corr(scores, pearson)

    def spearman(self, scores: Any) -> dict[str, float]:
        """Spearman(predicted, actual) over all (query, removal) pairs and over stable removals."""
        return self._corr(scores, spearman)


def query_losses(model: nn.Module, task: Task, query: Any) -> Tensor:
    """Per-query measurement oriented as a loss, [n_query], float64, no grad."""
    data = _to64(as_examples(query, name="query").data)
    with torch.no_grad():
        return task.query_loss(model.eval(), data).double()


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def leave_one_out(model: nn.Module, task: Task, train: Any, query: Any, removed: Sequence[int],
                  weight_decay: float, *, predicted_norms: Tensor | None = None,
                  retrainer: Retrainer | None = None, **retrain_options: Any) -> LOOResult:
    """Retrain without each `removed` example (warm start, strict optimum) and measure the queries.

    "Before" is the full-data retraining with the same settings, so both sides are optima of the
    same solver. `retrain_options` go to `Retrainer` (method, tol, max_iter, workers, progress,
    cache_dir, ...); `predicted_norms` skips the exact-Hessian Newton-step computation.
    """
    rt = retrainer or Retrainer(model, task, train, weight_decay, **retrain_options)
    n = rt.n_train
    removed = [int(i) for i in removed]
    if not removed:
        raise InputError("removed is empty; pass the training indices to leave out, e.g. list(range(0, n, 2))")
    if len(set(removed)) != len(removed) or min(removed) < 0 or max(removed) >= n:
        raise InputError(f"removed must be distinct indices in [0, {n}); got {removed[:10]}...")
    if n < 2:
        raise InputError("leave-one-out needs at least 2 training examples")
    base = rt.fit_many([torch.arange(n)], labels=["full data"], description="retraining (full)", _stacklevel=3)[0]
    subsets = [torch.cat([torch.arange(i), torch.arange(i + 1, n)]) for i in removed]
    runs = rt.fit_many(subsets, labels=removed, description="leave-one-out", _stacklevel=3)
    before = query_losses(base.model, task, query)
    actual = torch.stack([query_losses(r.model, task, query) - before for r in runs], 1)
    theta0 = _flat(base.model)
    delta = torch.stack([(_flat(r.model) - theta0).norm() for r in runs])
    if predicted_norms is None:
        predicted_norms = newton_step_norms(base.model, task, rt.data, removed, weight_decay)
    predicted_norms = torch.as_tensor(predicted_norms, dtype=torch.float64).reshape(-1)
    if predicted_norms.numel() != len(removed):
        raise InputError(f"predicted_norms has {predicted_norms.numel()} entries for {len(removed)} removals")
    return LOOResult(removed=removed, n_train=n, actual=actual,
                     grad_norms=torch.tensor([r.grad_norm for r in runs], dtype=torch.float64),
                     delta_norms=delta, predicted_norms=predicted_norms, unstable=delta > 2 * predicted_norms,
                     base_grad_norm=base.grad_norm)
