"""Relative influence (after RelatIF): scores divided by a per-training-point size, so that a few
high-loss outliers, whose large gradients inflate every raw score, stop dominating every ranking.

θ-relative: score(q, i) / ‖(H + λI)⁻¹ g_i‖ (how much i moves the query per unit of parameter change).
loss-relative: score(q, i) / sqrt(score(i, i)) (a cosine-like score in the (H + λI)⁻¹ inner product).
Both normalisers are positive, so the sign (helpful / harmful) is kept. PAPERS.md §4.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .attributor import Attributor
from .errors import InputError
from .scores import Scores

KINDS = ("theta", "loss")


def relative_normalisers(attr: Attributor, kind: str = "theta") -> Tensor:
    """(n_train,) the positive divisor of each training column: ‖(H+λI)⁻¹ g_i‖ or sqrt(g_iᵀ(H+λI)⁻¹ g_i)."""
    if kind not in KINDS:
        raise InputError(f"unknown relative kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "theta":
        return attr.inverse_grad_norms()
    self_inf = attr.self_influence()
    if bool((self_inf < 0).any()):
        raise InputError("loss-relative influence needs self-influence >= 0 (H + λI positive definite); "
                         "raise damping or use curvature='ggn', or kind='theta'")
    return self_inf.sqrt()


def normalise(scores: Scores, norms: Tensor) -> Scores:
    """Scores with every training column divided by its normaliser (a zero normaliser gives 0)."""
    if norms.shape != (scores.values.shape[1],):
        raise InputError(f"{norms.numel()} normalisers for {scores.values.shape[1]} training columns")
    safe = torch.where(norms > 0, norms, torch.ones_like(norms)).to(scores.values.dtype)
    values = torch.where(norms[None] > 0, scores.values / safe[None], torch.zeros_like(scores.values))
    return Scores(values, scores.query_ids, scores.train_ids, {**scores.meta, "relative": True})


def relative_scores(attr: Attributor, query: Any, kind: str = "theta", ids: Sequence | None = None) -> Scores:
    """RelatIF scores for `query` × the fitted training set; same sign as `attr.score`, outliers tamed."""
    norms = relative_normalisers(attr, kind)
    return normalise(attr.score(query, ids), norms)
