"""Captum 0.9 (TracInCP, TracInCPFast, TracInCPFastRandProj, NaiveInfluenceFunction, ArnoldiInfluenceFunction).

Conventions fixed here: Captum's influence functions use the Hessian of the SUM of the training
losses and add `hessian_reg` to it, so hessian_reg = n·wd gives n(H + wd·I) and the scores are
multiplied by n. TracIn scores are learning-rate × g_q^T g_i: with rate 1 they equal influent's
identity solver (g_q^T g_i, which ignores damping; checked: ratio 1.000); TracInCPFastRandProj
projects the last layer's gradient factors to √64 × √64 dimensions, so it estimates the same
last-layer product. `influence` is always called with k=None (the full matrix; RandProj defaults to
top-5). All are positive = helpful, [query, train].
The loss is CrossEntropyLoss(reduction="sum"), whose per-example gradients are influent's g_i.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import Method, Problem, as_scores


def _checkpoint(p: Problem) -> str:
    path = p.workdir / "captum-checkpoint.pt"
    torch.save(p.model.state_dict(), path)
    return str(path)


def _load(model, path) -> float:
    model.load_state_dict(torch.load(path))
    return 1.0  # TracIn's learning rate for this checkpoint


def _tracin(kind: str, opts: dict) -> Method:
    def run(p: Problem) -> Tensor:
        from captum.influence import TracInCP, TracInCPFast, TracInCPFastRandProj

        loss = torch.nn.CrossEntropyLoss(reduction="sum")
        common = dict(train_dataset=p.dataset("train"), checkpoints=[_checkpoint(p)], checkpoints_load_func=_load,
                      loss_fn=loss, batch_size=p.batch_size)
        if kind == "TracInCP":
            tr = TracInCP(p.model, sample_wise_grads_per_batch=True, **common)
        else:
            last = [m for m in p.model.modules() if isinstance(m, torch.nn.Linear)][-1]
            cls = TracInCPFast if kind == "TracInCPFast" else TracInCPFastRandProj
            tr = cls(p.model, final_fc_layer=last, **common, **opts)
        # k=None asks for the full score matrix: TracInCPFastRandProj.influence defaults to k=5 (top-5
        # proponents, a KMostInfluentialResults) unlike TracInCP/TracInCPFast, whose default is k=None
        v = tr.influence(tuple(p.query), k=None)
        return as_scores(v, len(p.query[1]), p.n)
    return run


def _influence_function(kind: str, opts: dict) -> Method:
    def run(p: Problem) -> Tensor:
        from captum.influence import NaiveInfluenceFunction
        from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction

        cls = NaiveInfluenceFunction if kind == "naive" else ArnoldiInfluenceFunction
        o = dict(opts)
        if o.get("projection_dim") == "all":
            o["projection_dim"] = p.n_params
        f = cls(p.model, p.dataset("train"), _checkpoint(p), checkpoints_load_func=_load,
                loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"), batch_size=p.batch_size,
                sample_wise_grads_per_batch=True, hessian_reg=p.n * p.weight_decay, **o)
        v = f.influence(tuple(p.query))
        return as_scores(v, len(p.query[1]), p.n, scale=float(p.n))
    return run


def _self(kind: str, opts: dict) -> Method:
    def run(p: Problem) -> Tensor:
        from captum.influence import TracInCP
        from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction

        loss = torch.nn.CrossEntropyLoss(reduction="sum")
        if kind == "TracInCP":
            tr = TracInCP(p.model, p.dataset("train"), [_checkpoint(p)], checkpoints_load_func=_load, loss_fn=loss,
                          batch_size=p.batch_size, sample_wise_grads_per_batch=True)
            return tr.self_influence().double().flatten()
        f = ArnoldiInfluenceFunction(p.model, p.dataset("train"), _checkpoint(p), checkpoints_load_func=_load,
                                     loss_fn=loss, batch_size=p.batch_size, sample_wise_grads_per_batch=True,
                                     hessian_reg=p.n * p.weight_decay, **opts)
        return f.self_influence().double().flatten() * p.n
    return run


SMALL = {
    "TracInCP": (_tracin, "TracInCP", {}),
    "TracInCPFast (last layer)": (_tracin, "TracInCPFast", {}),
    "TracInCPFastRandProj (last layer)": (_tracin, "TracInCPFastRandProj", dict(projection_dim=64, seed=0)),
    "NaiveInfluenceFunction (full rank)": (_influence_function, "naive", dict(projection_dim="all")),
    "ArnoldiInfluenceFunction r=100": (_influence_function, "arnoldi",
                                       dict(arnoldi_dim=200, projection_dim=100, seed=0)),
}
LARGE = {  # Arnoldi needs ~80 Hessian products over 60k examples: not run at this scale
    "TracInCP": (_tracin, "TracInCP", {}),
    "TracInCPFast (last layer)": (_tracin, "TracInCPFast", {}),
}

SLOW = {"NaiveInfluenceFunction (full rank)"}  # left out by --quick


def methods(scale: str) -> dict[str, Method]:
    return {k: f(kind, o) for k, (f, kind, o) in (SMALL if scale == "small" else LARGE).items()}


def self_methods(scale: str) -> dict[str, Method]:
    if scale == "small":
        return {"TracInCP": _self("TracInCP", {}),
                "ArnoldiInfluenceFunction r=100": _self("arnoldi", dict(arnoldi_dim=200, projection_dim=100, seed=0))}
    return {"TracInCP": _self("TracInCP", {})}
