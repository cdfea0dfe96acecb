"""Saving and restoring a fitted Attributor: config, model fingerprint, gradients (or a pointer to the
gradient store) and solver state in one torch file; a model with other weights is refused."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .compressed import rows_second_moment
from .curvature import DenseOperator
from .errors import ConfigMismatchError
from .factors import plan_factors
from .grads import ModelFunction, eval_mode
from .inputs import Examples
from .params import select_params
from .solvers import make_solver
from .store import GradientStore
from .task import Task


def save_state(attr: Any, path: str | Path) -> None:
    """Write a fitted attributor's state to `path`."""
    from_store = attr.store_ is not None and attr.compressor_ is not None
    state = {"influent": __version__, "config": attr._config(),
             "fingerprint": model_fingerprint(attr.model, attr.space_), "space": list(attr.space_.names),
             "curvature_ids": attr.curvature_ids_,
             "train": None if from_store else attr.train_examples_,
             "train_grads": None if from_store else attr.train_grads_,
             "store": str(attr.store_.path) if from_store else None,
             "curvature_matrix": attr.curvature_.dense() if from_store else None,
             "solver": attr.solver_.state_dict(), "solver_object": attr.solver, "compressor": attr.compressor_}
    torch.save(state, Path(path))


def load_state(cls: type, path: str | Path, model: nn.Module, task: Task, **overrides: Any) -> Any:
    """An attributor of class `cls` restored from `path` for `model`."""
    state = torch.load(Path(path), weights_only=False)
    cfg = state["config"]
    attr = cls(model, task, params=state["space"], curvature=cfg["curvature"], solver=state["solver_object"],
               damping=cfg["damping"], batch_size=cfg["batch_size"], seed=cfg["seed"], **overrides)
    attr.space_ = select_params(model, list(state["space"]))
    if model_fingerprint(model, attr.space_) != state["fingerprint"]:
        raise ConfigMismatchError(f"{path} was saved for a model with different weights or parameters; "
                                  "load it with the model it was fitted on, or refit")
    with eval_mode(model):
        attr.fn_ = ModelFunction(model, task, attr.space_)
        attr.factor_layers_ = plan_factors(model, attr.space_)
        attr.compressor_, attr.store_ = state.get("compressor"), None
        examples: Examples | None = state["train"]
        if examples is None:  # scored from the gradient store: no training data needed
            attr.store_ = GradientStore.open(state["store"], fingerprint=state["fingerprint"])
            attr.curvature_ = DenseOperator(state["curvature_matrix"])
            train_ids = attr.store_.ids
        else:
            pos = {i: j for j, i in enumerate(examples.ids)}
            curv_set = examples.subset([pos[i] for i in state["curvature_ids"]])
            attr.curvature_ = _restored_curvature(attr, examples, curv_set, state)
            train_ids = list(examples.ids)
        attr.solver_ = make_solver(state["solver_object"], curvature_name=str(cfg["curvature"]),
                                   size=attr.curvature_.size, seed=attr.seed)
        if examples is not None:  # e.g. CG's K-FAC preconditioner, rebuilt on the same curvature set
            attr._attach_preconditioner(curv_set)
        attr.solver_.load_state_dict(state["solver"], attr.curvature_, attr.damping)
    attr.train_examples_, attr.train_ids_, attr.n_train_ = examples, train_ids, len(train_ids)
    attr.curvature_ids_, attr.train_grads_, attr.timings_ = state["curvature_ids"], state["train_grads"], {}
    return attr


def _restored_curvature(attr: Any, examples: Examples, curv_set: Examples, state: dict):
    """The curvature again: from the saved compressed rows when fit built it from them, else rebuilt."""
    rows = state["train_grads"]
    if attr._curvature_from_rows() and rows is not None and len(curv_set) == len(examples):
        return rows_second_moment([(0, rows)], rows.dtype)
    return attr._make_curvature(curv_set)


def model_fingerprint(model: nn.Module, space) -> str:
    """sha256 over the selected parameters' names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    table = dict(model.named_parameters())
    for name in space.names:
        t = table[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
