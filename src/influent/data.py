"""Loaders for the data sets of shared/DATA.md; a missing set raises DatasetNotAvailable naming the fix."""
from __future__ import annotations

import torch
from torch import Tensor


def load_digits(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 8×8 digits (embedded, no download): X in [0, 1] [1797, 64], y [1797]."""
    from sklearn.datasets import load_digits as _load

    X, y = _load(return_X_y=True)
    return torch.as_tensor(X / 16.0, dtype=dtype), torch.as_tensor(y, dtype=torch.long)


def split(X: Tensor, y: Tensor, n_train: int, n_test: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded random train/test split."""
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train: n_train + n_test]
    return X[tr], y[tr], X[te], y[te]
