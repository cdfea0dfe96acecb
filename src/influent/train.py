"""Train small models on the mean loss + (wd/2)‖θ‖²: to a strict optimum (L-BFGS), as influence theory
assumes, or by a fixed seeded minibatch recipe (Adam), as models are trained in practice."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .task import Task, batch_size_of, index_batch


def objective(model: nn.Module, task: Task, data: tuple, weight_decay: float) -> Tensor:
    """Mean training loss plus (wd/2)‖θ‖² over trainable parameters."""
    loss = task.train_loss(model, data).mean()
    if weight_decay:
        loss = loss + 0.5 * weight_decay * sum((p ** 2).sum() for p in model.parameters() if p.requires_grad)
    return loss


def grad_norm(model: nn.Module, task: Task, data: tuple, weight_decay: float) -> float:
    """Full-batch ‖∇R‖ of `objective` over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(objective(model, task, data, weight_decay), params)
    return float(torch.sqrt(sum((g ** 2).sum() for g in grads)))


def fit_lbfgs(model: nn.Module, task: Task, data: tuple, weight_decay: float = 1e-3, max_iter: int = 2000,
              tol: float = 1e-9) -> float:
    """Full-batch L-BFGS until the gradient norm is below `tol`; returns the final gradient norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=0,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective(model, task, data, weight_decay)
        loss.backward()
        return loss

    model.eval()
    opt.step(closure)
    opt.zero_grad()
    return grad_norm(model, task, data, weight_decay)


def fit_adam(model: nn.Module, task: Task, data: tuple, weight_decay: float = 1e-3, epochs: int = 5,
             batch_size: int = 128, lr: float = 1e-3, seed: int = 0) -> float:
    """Seeded minibatch Adam for a fixed number of epochs; returns the final full-batch ‖∇R‖.

    A recipe, not an optimum: the same (data, seed) gives the same weights, so retraining on a subset
    with it answers "what would training have produced without these points" (TRAK-style LDS).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(int(seed))
    n = batch_size_of(data)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=g).split(batch_size):
            loss = objective(model, task, index_batch(data, idx), weight_decay)
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad()
    return grad_norm(model, task, data, weight_decay)


def mlp(sizes: list[int], activation: type[nn.Module] = nn.Tanh, seed: int = 0,
        dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """A seeded MLP, e.g. mlp([64, 32, 10]) (the digits model of the benchmarks)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers).to(dtype)
