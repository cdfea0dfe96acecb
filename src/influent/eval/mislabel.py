"""Mislabel detection as a ground truth: flip a seeded fraction of labels, then ask how well a
ranking (e.g. self-influence) puts the flipped examples first."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError


def flip_labels(y: Tensor, fraction: float, n_classes: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Move round(fraction·n) seeded labels to a different, uniformly drawn class: (y_noisy, flipped_mask)."""
    if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point():
        raise InputError("y must be a 1-d integer tensor of class labels")
    if not isinstance(n_classes, int) or n_classes < 2:
        raise InputError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise InputError(f"labels must lie in [0, {n_classes}); got {int(y.min())}..{int(y.max())}")
    if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise InputError(f"fraction must lie in [0, 1], got {fraction!r}")
    n = y.numel()
    count = int(round(fraction * n))
    g = torch.Generator().manual_seed(int(seed))
    pos = torch.randperm(n, generator=g)[:count]
    shift = torch.randint(1, n_classes, (count,), generator=g)  # 1..C-1: never the same class
    y_noisy = y.clone()
    y_noisy[pos] = (y[pos] + shift.to(y.dtype)) % n_classes
    mask = torch.zeros(n, dtype=torch.bool)
    mask[pos] = True
    return y_noisy, mask


def detection_auc(ranking_scores: Tensor, flipped_mask: Tensor) -> dict[str, float]:
    """ROC-AUC of `ranking_scores` (higher = more suspicious) for the flipped examples, and
    `found_top10pct`: the fraction of flipped examples among the ceil(10 %) highest-ranked."""
    from sklearn.metrics import roc_auc_score

    s = torch.as_tensor(ranking_scores).detach().cpu().double().flatten()
    mask = torch.as_tensor(flipped_mask).detach().cpu().bool().flatten()
    if s.numel() != mask.numel():
        raise InputError(f"{s.numel()} ranking scores for {mask.numel()} mask entries; pass one score per example")
    if not torch.isfinite(s).all():
        raise InputError("ranking_scores contain NaN or Inf")
    n_flip = int(mask.sum())
    if n_flip == 0 or n_flip == mask.numel():
        raise InputError("flipped_mask needs both flipped and clean examples for an AUC")
    auc = float(roc_auc_score(mask.numpy(), s.numpy()))
    top = torch.argsort(s, descending=True, stable=True)[: math.ceil(0.1 * s.numel())]
    return {"auc": auc, "found_top10pct": float(mask[top].sum()) / n_flip}
