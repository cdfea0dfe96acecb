"""Memorisation vs generalisation by the sign of aggregate influence (PAPERS.md §4, rule M1).

For each training point i, S_V(i) = mean over a held-out set V of score_f(q, i), computed with one
solve: (H + λI)⁻¹ Σ_q ∇f_q. The measurement f is the attributor's task (loss by default; margin,
log-probability or probability with ``Task.classification(measurement=...)``). A point is
**memorised** when S_V(i) ≤ 0: it helps no held-out point on balance (it can only help itself,
self-influence being ≥ 0); it **generalises** when S_V(i) > 0. The rule needs a model trained to
‖∇R‖ ≈ 0 (early stopping breaks the influence approximation), and it measures harm to others,
which is not Feldman–Zhang memorisation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..attributor import Attributor
from ..errors import InputError, NotFittedError
from ..inputs import as_examples
from ..params import select_params
from ..task import Task
from ..train import fit_lbfgs


@dataclass
class Memorization:
    """Per training point: mean held-out influence (`aggregate`), the label, and a ranking."""

    aggregate: Tensor          # [n_train] S_V(i), mean over the held-out set; ≤ 0 means memorised
    memorised: Tensor          # [n_train] bool
    ranking: Tensor            # [n_train] training positions, most memorised (lowest aggregate) first
    train_ids: list
    n_heldout: int
    self_influence: Tensor | None = None
    meta: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """'memorised' or 'generalising' for each training point, in training order."""
        return ["memorised" if m else "generalising" for m in self.memorised.tolist()]

    def ranked(self, k: int | None = None) -> list[tuple[Any, float, str]]:
        """(train id, aggregate, label) for the k most memorised points (all when k is None)."""
        pos = self.ranking[:k].tolist()
        return [(self.train_ids[j], float(self.aggregate[j]), self.labels[j]) for j in pos]

    def plot(self, path: str | Path | None = None, flipped: Tensor | None = None, ax: Any = None):
        """Aggregate influence of every training point, sorted, coloured by label (or by `flipped`)."""
        from matplotlib.figure import Figure  # no pyplot: leaves the user's backend and figures alone

        fig = None
        if ax is None:
            fig = Figure(figsize=(6, 3.5))
            ax = fig.subplots()
        order = torch.argsort(self.aggregate)
        agg = self.aggregate[order].double().numpy()
        x = torch.arange(len(agg)).numpy()
        if flipped is not None:
            mark = torch.as_tensor(flipped, dtype=torch.bool)[order].numpy()
            ax.scatter(x[~mark], agg[~mark], s=3, c="tab:blue", label="clean label")
            ax.scatter(x[mark], agg[mark], s=3, c="tab:red", label="flipped label")
        else:
            mem = self.memorised[order].numpy()
            ax.scatter(x[mem], agg[mem], s=3, c="tab:red", label="memorised (S_V ≤ 0)")
            ax.scatter(x[~mem], agg[~mem], s=3, c="tab:blue", label="generalising (S_V > 0)")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_yscale("symlog", linthresh=max(1e-12, float(abs(self.aggregate).median())))
        ax.set_xlabel("training points, sorted by aggregate influence")
        ax.set_ylabel(f"mean influence on {self.n_heldout} held-out points")
        ax.legend(loc="lower right", markerscale=4)
        if fig is not None:
            fig.tight_layout()
            if path is not None:
                fig.savefig(path, dpi=120)
        return ax


def _labels_of(data: Any) -> Tensor | None:
    if isinstance(data, dict):
        return next((data[k] for k in ("target", "targets", "label", "labels", "y") if k in data), None)
    return data[1] if isinstance(data, (tuple, list)) and len(data) > 1 else None


def check_heldout(heldout: Any, name: str = "held-out set") -> None:
    """Refuse an empty held-out set or one whose labels are all one class (before any work)."""
    examples = as_examples(heldout, name=name)
    if len(examples) == 0:
        raise InputError(f"the {name} is empty; pass held-out examples (e.g. a validation split)")
    y = _labels_of(examples.data)
    if y is not None and not y.is_floating_point() and y.numel() and int(torch.unique(y).numel()) < 2:
        raise InputError(f"the {name} has only class {int(y.flatten()[0])}; aggregate influence over one class "
                         "calls every point of the other classes memorised. Use a held-out set with every class")


def refit(model: nn.Module, task: Task, train: Any, params: Any = "last", weight_decay: float = 1e-3,
          max_iter: int = 500, tol: float = 1e-6) -> tuple[nn.Module, float]:
    """A copy of `model` whose `params` are refit by full-batch L-BFGS on `train`; (copy, final ‖∇R‖).

    The sign rule assumes ‖∇R(θ̂)‖ ≈ 0 in the attributed parameters. A minibatch-trained model is not
    there; with `params="last"` the refit is convex in the last layer (features fixed), so it reaches
    the optimum that last-layer influence with damping = `weight_decay` describes. The other parameters
    and the original model are left as they are.
    """
    polished = copy.deepcopy(model)
    names = set(select_params(polished, params).names)
    flags = {n: p.requires_grad for n, p in polished.named_parameters()}
    for n, p in polished.named_parameters():
        p.requires_grad_(n in names)
    try:
        gnorm = fit_lbfgs(polished, task, as_examples(train, name="train").data, weight_decay, max_iter, tol)
    finally:
        for n, p in polished.named_parameters():
            p.requires_grad_(flags[n])
    return polished, gnorm


def analyze(attr: Attributor, heldout: Any, ids: Sequence | None = None,
                 self_influence: bool = False) -> Memorization:
    """Label each fitted training point memorised (S_V ≤ 0) or generalising (S_V > 0) over `heldout`."""
    if not hasattr(attr, "solver_"):
        raise NotFittedError("call attr.fit(train) before analyze(attr, heldout)")
    check_heldout(heldout)
    n_heldout = len(as_examples(heldout, ids, "held-out set"))
    aggregate = attr.summed_score(heldout, ids) / n_heldout
    ranking = torch.argsort(aggregate, stable=True)
    si = attr.self_influence() if self_influence else None
    return Memorization(aggregate, aggregate <= 0, ranking, list(attr.train_ids_), n_heldout, si,
                        {"task": attr.task.describe(), "damping": float(attr.damping), "n_params": attr.space_.numel})
