"""Tiny seeded problems for tests, docs and benchmarks (test cases as data)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def blobs(n: int = 40, d: int = 5, classes: int = 3, seed: int = 0, dtype: torch.dtype = torch.float64,
          spread: float = 1.0) -> tuple[Tensor, Tensor]:
    """Gaussian class blobs: X [n, d], integer labels y [n]."""
    g = torch.Generator().manual_seed(seed)
    centers = 2.0 * torch.randn(classes, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % classes
    X = centers[y] + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    return X.to(dtype), y


def regression_data(n: int = 30, d: int = 4, out: int = 1, seed: int = 0,
                    dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Noisy linear targets: X [n, d], y [n, out]."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    W = torch.randn(d, out, generator=g, dtype=torch.float64)
    y = X @ W + 0.1 * torch.randn(n, out, generator=g, dtype=torch.float64)
    return X.to(dtype), y.to(dtype)


class TiedAutoencoder(nn.Module):
    """Decoder reuses the encoder weight (a tied parameter counted once)."""

    def __init__(self, d: int = 4, h: int = 3):
        super().__init__()
        self.enc = nn.Linear(d, h)
        self.bias_out = nn.Parameter(torch.zeros(d))

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.enc(x)) @ self.enc.weight + self.bias_out


def seeded(factory, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """Build a module with a fixed seed, in dtype, in eval mode."""
    torch.manual_seed(seed)
    return factory().to(dtype).eval()
