"""dattri 0.3 (explicit IF, CG, LiSSA, Arnoldi, DataInf, EK-FAC, TracIn, TRAK) under influent's conventions.

Conventions fixed here: dattri inverts the Hessian of `loss_func` on EACH batch of the cache
loader and sums the results (per-batch inversion), so the Hessian-based attributors get the whole
training set as one batch with the MEAN loss: H is the mean-loss Hessian and regularization = wd.
Scores are g_i^T H^{-1} g_q, positive = helpful, in [train, query] layout: transposed. TracIn
(weight 1) is g_q^T g_i, as influent's identity solver; TRAK's kernel XᵀX is a sum: regularization = n·wd and
scores × n. EK-FAC estimates its Fisher from the loss with the true labels (the empirical Fisher:
dattri uses one target function for the Fisher and the test gradients). Arnoldi and DataInf run on a
float32 copy (dattri 0.3.0 builds float32 tensors there and fails on a float64 model; checked:
Arnoldi equals influent's hessian+arnoldi r=100 to 7e-6, DataInf equals its per-layer
Sherman–Morrison formula to 1e-6).
EK-FAC on a layer with a bias: dattri 0.3.0's transform concatenates the flattened weight gradient
and the bias gradient and reshapes them to (out, in+1), which does not line up with the [W | b]
layout of its Kronecker factors (library bug: rows o ≥ 1 are shifted; the scores were 28 % off the
EK-FAC of its own factors). We run it on the same function with each biased Linear replaced by a
bias-free Linear on [x, 1] (_FoldedLinear: weight [W | b], an exact reparametrisation: same outputs
and the same per-example gradients, only laid out as one matrix), where dattri's layout is right:
checked, its scores then equal g_qᵀ Q (Λ + λ)⁻¹ Qᵀ g_i from its own factors and corrected
eigenvalues to 3e-8. On the digits MLP this empirical-Fisher EK-FAC still ranks like gradient
similarity (Spearman vs identity 0.97): most corrected eigenvalues are below λ = 1e-3.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import Method, Problem, as_scores, float32_copy


class _FoldedLinear(torch.nn.Module):
    """y = [x, 1] @ [W | b]ᵀ: a Linear layer with its bias folded into a bias-free Linear's last column."""

    def __init__(self, layer: torch.nn.Linear):
        super().__init__()
        self.linear = torch.nn.Linear(layer.in_features + 1, layer.out_features, bias=False,
                                      dtype=layer.weight.dtype, device=layer.weight.device)
        with torch.no_grad():
            self.linear.weight.copy_(torch.cat([layer.weight, layer.bias[:, None]], 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1))


def _bias_folded(p: Problem) -> Problem:
    """The same problem on a copy of the model whose biased Linear layers are _FoldedLinear (same function)."""
    import copy
    import dataclasses

    model = copy.deepcopy(p.model)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, torch.nn.Linear) and mod.bias is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, _FoldedLinear(mod))
    return dataclasses.replace(p, model=model.eval())


def _batched(x: Tensor) -> Tensor:
    return x if x.dim() > 1 else x.unsqueeze(0)


def _task(p: Problem):
    from dattri.task import AttributionTask

    model = p.model

    def loss(params, data):  # mean CE; dattri vmaps it over single examples for per-example gradients
        x, y = data
        out = torch.func.functional_call(model, params, _batched(x))
        return torch.nn.functional.cross_entropy(out, y.reshape(-1))

    return AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())


def _correct_probability(p: Problem):
    model = p.model

    def prob(params, data):
        x, y = data
        out = torch.func.functional_call(model, params, _batched(x))
        return torch.exp(-torch.nn.functional.cross_entropy(out, y.reshape(-1)))
    return prob


def _run(p: Problem, attributor, cache_batch: int | None, scale: float, cached_only: bool = False) -> Tensor:
    train_loader = p.loader("train", p.batch_size)
    if cache_batch is not None:
        attributor.cache(p.loader("train", cache_batch))
    test_loader = p.loader("query", len(p.query[1]))
    with torch.no_grad():
        v = (attributor.attribute(test_dataloader=test_loader) if cached_only else
             attributor.attribute(train_dataloader=train_loader, test_dataloader=test_loader))
    return as_scores(v, len(p.query[1]), p.n, transpose=True, scale=scale)


def _method(kind: str, opts: dict) -> Method:
    def run(p: Problem) -> Tensor:
        from dattri.algorithm import influence_function as IF
        from dattri.algorithm.tracin import TracInAttributor
        from dattri.algorithm.trak import TRAKAttributor

        if kind in ("arnoldi", "datainf") and next(p.model.parameters()).dtype != torch.float32:
            p = float32_copy(p)  # dattri 0.3.0 builds float32 tensors here and fails on a float64 model
        task, lam, n = _task(p), p.weight_decay, p.n
        if kind == "tracin":
            a = TracInAttributor(task, weight_list=torch.ones(1, dtype=next(p.model.parameters()).dtype),
                                 normalized_grad=False, projector_kwargs=opts.get("projector"))
            return _run(p, a, None, 1.0)
        if kind == "trak":
            a = TRAKAttributor(task, _correct_probability(p), projector_kwargs=dict(opts), regularization=n * lam)
            return _run(p, a, p.batch_size, float(n), cached_only=True)
        if kind == "lissa":
            a = IF.IFAttributorLiSSA(task, damping=lam, **opts)
            return _run(p, a, n, 1.0)
        if kind == "ekfac":
            p = _bias_folded(p)
            task = _task(p)
            return _run(p, IF.IFAttributorEKFAC(task, damping=lam), p.batch_size, 1.0)
        cls = {"explicit": IF.IFAttributorExplicit, "cg": IF.IFAttributorCG, "arnoldi": IF.IFAttributorArnoldi,
               "datainf": IF.IFAttributorDataInf}[kind]
        return _run(p, cls(task, regularization=lam, **opts), n, 1.0)
    return run


SMALL = {
    "IF explicit": ("explicit", {}),
    "IF CG": ("cg", dict(max_iter=300)),
    "IF LiSSA": ("lissa", dict(batch_size=100, recursion_depth=1000, scaling=10.0)),
    "IF Arnoldi r=100": ("arnoldi", dict(proj_dim=100, max_iter=200)),
    "IF DataInf": ("datainf", {}),
    "IF EK-FAC": ("ekfac", {}),
    "TracIn": ("tracin", {}),
    "TRAK k=512": ("trak", dict(proj_dim=512)),
}
LARGE = {  # the Hessian-product methods (CG, LiSSA, Arnoldi) are not run at this scale
    "IF EK-FAC": ("ekfac", {}),
    "TracIn": ("tracin", {}),
    "TRAK k=512": ("trak", dict(proj_dim=512)),
}

SLOW = {"IF CG", "IF LiSSA"}  # left out by --quick


def methods(scale: str) -> dict[str, Method]:
    return {k: _method(*v) for k, v in (SMALL if scale == "small" else LARGE).items()}


def self_methods(scale: str) -> dict[str, Method]:
    """dattri 0.3 exposes no self-influence API for its IF attributors: none."""
    return {}
