"""`influent demo`: train a small classifier on an installed data set, attribute a few test predictions, write the report."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..data import load_digits, load_fashion_mnist, load_mnist, split
from ..errors import InputError
from ..eval.mislabel import flip_labels
from ..report import Stages, explain
from ..task import Task
from ..train import fit_lbfgs, mlp

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _digits(n_train: int, n_pool: int) -> tuple:
    X, y = load_digits(torch.float64)
    if not 10 <= n_train <= X.shape[0] - n_pool // 4:
        raise InputError(f"--n-train must be between 10 and {X.shape[0] - n_pool // 4} (digits has {X.shape[0]} images)")
    return split(X, y, n_train, min(n_pool, X.shape[0] - n_train), seed=0)


def _idx(loader: Callable) -> Callable:
    def load(n_train: int, n_pool: int) -> tuple:
        Xtr, ytr = loader("train", torch.float64)
        Xte, yte = loader("test", torch.float64)
        if not 10 <= n_train <= Xtr.shape[0]:
            raise InputError(f"--n-train must be between 10 and {Xtr.shape[0]}")
        g = torch.Generator().manual_seed(0)
        tr = torch.randperm(Xtr.shape[0], generator=g)[:n_train]
        te = torch.randperm(Xte.shape[0], generator=g)[:n_pool]
        return Xtr[tr].flatten(1), ytr[tr], Xte[te].flatten(1), yte[te]
    return load


@dataclass(frozen=True)
class Demo:
    """A demo set: how to load it, how big a model, which curvature and solver."""

    load: Callable[[int, int], tuple]
    n_train: int
    hidden: int
    attributor: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    weight_decay: float = 1e-3


def _arnoldi() -> Any:
    from ..solvers import Arnoldi
    return Arnoldi(rank=40, iterations=80)


DEMOS: dict[str, Demo] = {
    "digits": Demo(_digits, 1000, 32, {"curvature": "hessian", "solver": "direct"}),
    "mnist": Demo(_idx(load_mnist), 2000, 32, {"curvature": "ggn", "solver": "arnoldi"}),
    "fashion-mnist": Demo(_idx(load_fashion_mnist), 2000, 32, {"curvature": "ggn", "solver": "arnoldi"}, FASHION),
}


def pick_queries(pred: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """Up to half misclassified test points (the interesting ones), the rest correct, in test-set order."""
    wrong, right = (pred != y).nonzero().flatten(), (pred == y).nonzero().flatten()
    n_wrong = min(len(wrong), n // 2)
    return torch.cat([wrong[:n_wrong], right[: n - n_wrong]])


def run_demo(data: str = "digits", out: str | Path | None = None, n_train: int | None = None, n_queries: int = 6,
             top: int = 5, flip: float = 0.0, hidden: int | None = None, progress: bool = True,
             say: Callable[[str], None] = print) -> Path:
    """Train, attribute, write the report; returns the report's path (data="smollm2": the language-model demo)."""
    if data == "smollm2":
        from .demo_lm import run_lm_demo

        return run_lm_demo(out, n_train=n_train or 1000, top=top, progress=progress, say=say)
    if data not in DEMOS:
        raise InputError(f"unknown demo data {data!r}; choose one of {', '.join(DEMOS)}, smollm2")
    if n_queries < 1 or top < 1 or (hidden is not None and hidden < 1):
        raise InputError("--n-queries, --top and --hidden must be at least 1")
    demo = DEMOS[data]
    n_train = demo.n_train if n_train is None else n_train
    hidden = demo.hidden if hidden is None else hidden
    stages = Stages(progress)
    with stages(f"loading {data}"):
        Xtr, ytr, Xte, yte = demo.load(n_train, 400)
        flagged = None
        if flip > 0:
            ytr, flagged = flip_labels(ytr, flip, 10, seed=0)
    model = mlp([Xtr.shape[1], hidden, 10], dtype=torch.float64, seed=0)
    task = Task.classification()
    with stages(f"training a {Xtr.shape[1]}→{hidden}→10 MLP (L-BFGS, weight decay {demo.weight_decay:g})"):
        grad_norm = fit_lbfgs(model, task, (Xtr, ytr), weight_decay=demo.weight_decay, max_iter=1500, tol=1e-8)
    with torch.no_grad():
        pred = model(Xte).argmax(1)
    acc = float((pred == yte).double().mean())
    say(f"trained on {n_train:,} {data} examples: test accuracy {acc:.1%} (‖∇R‖ = {grad_norm:.1e})")
    q = pick_queries(pred, yte, n_queries)
    options = dict(demo.attributor, damping=demo.weight_decay)
    if options["solver"] == "arnoldi":
        options["solver"] = _arnoldi()
    out = Path(out or f"influent-report/demo-{data}")
    title = f"influent demo: {data}, {n_train:,} training examples"
    config = {"data": data, "n_train": n_train, "n_queries": n_queries, "top": top, "flip": flip,
              "model": f"MLP {Xtr.shape[1]}→{hidden}→10 tanh, float64, L-BFGS", "test_accuracy": round(acc, 4),
              "attributor": {k: (v if isinstance(v, (str, int, float)) else repr(v)) for k, v in options.items()}}
    return explain(model, task, (Xtr, ytr), (Xte[q], yte[q]), out, attributor=options, query_ids=q.tolist(),
                   class_names=demo.class_names, flagged=flagged, top=top, title=title, config=config,
                   progress=progress, stages=stages)
