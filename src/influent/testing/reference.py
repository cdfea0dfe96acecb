"""Slow, obviously-correct float64 references: loops over examples and dense matrices.

Every fast path in influent is tested against one of these (DESIGN.md §6).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..params import ParamSpace
from ..task import Task, index_batch


def _flat_fn(model: nn.Module, space: ParamSpace):
    base = {n: p.detach() for n, p in model.named_parameters()}

    def call(flat: Tensor):
        params = dict(base)
        params.update(space.unflatten(flat))
        return lambda *a: functional_call(model, params, a)
    flat0 = space.flatten({n: base[n] for n in space.names})
    return call, flat0


def per_example_grads_loop(model: nn.Module, task: Task, space: ParamSpace, batch, query: bool = False) -> Tensor:
    """One autograd.grad call per example: [B, P]."""
    call, flat0 = _flat_fn(model, space)
    rows = []
    n = (next(iter(batch.values())) if isinstance(batch, dict) else batch[0]).shape[0]
    for i in range(n):
        one = index_batch(batch, slice(i, i + 1))
        flat = flat0.clone().requires_grad_(True)
        fn = task.query_loss if query else task.train_loss
        (g,) = torch.autograd.grad(fn(call(flat), one)[0], flat)
        rows.append(g)
    return torch.stack(rows)


def dense_hessian(model: nn.Module, task: Task, space: ParamSpace, batch) -> Tensor:
    """Hessian of the mean training loss by torch.autograd.functional.hessian: [P, P]."""
    call, flat0 = _flat_fn(model, space)
    return torch.autograd.functional.hessian(lambda f: task.train_loss(call(f), batch).mean(), flat0)


def dense_ggn(model: nn.Module, task: Task, space: ParamSpace, batch) -> Tensor:
    """(1/n) Σ_i J_iᵀ ∇²_o ℓ_i J_i with the output Hessian from autograd (not the task's closed form)."""
    call, flat0 = _flat_fn(model, space)
    n = (batch[0] if not isinstance(batch, dict) else next(iter(batch.values()))).shape[0]
    G = torch.zeros(flat0.numel(), flat0.numel(), dtype=flat0.dtype)
    for i in range(n):
        one = index_batch(batch, slice(i, i + 1))
        J = torch.autograd.functional.jacobian(lambda f: task.forward(call(f), one).reshape(-1), flat0)
        out = task.forward(call(flat0), one).detach()
        Ho = torch.autograd.functional.hessian(lambda o: task.loss(o.reshape(out.shape), one).sum(), out.reshape(-1))
        G += J.T @ Ho @ J
    return G / n


def exact_influence(G_query: Tensor, G_train: Tensor, H: Tensor, damping: float) -> Tensor:
    """score[q, i] = g_qᵀ (H + λI)⁻¹ g_i by a dense solve: [n_query, n_train]."""
    A = H + damping * torch.eye(H.shape[0], dtype=H.dtype)
    return G_query @ torch.linalg.solve(A, G_train.T)
