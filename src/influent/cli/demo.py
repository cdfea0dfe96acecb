"""The first demo: sklearn digits, an MLP trained to optimum, exact-Hessian influence."""
from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

from ..attributor import Attributor
from ..data import load_digits, split
from ..errors import InputError
from ..progress import stage
from ..task import Task
from ..train import fit_lbfgs, mlp

WEIGHT_DECAY = 1e-3


def run_demo(console: Console, n_train: int = 1000, n_queries: int = 4, top: int = 3, progress: bool = True) -> dict:
    """Train, attribute, print; returns the numbers it printed (for tests)."""
    X, y = load_digits(torch.float64)
    if not 10 <= n_train <= X.shape[0] - n_queries:
        raise InputError(f"--n-train must be between 10 and {X.shape[0] - n_queries} (digits has {X.shape[0]} images)")
    if n_queries < 1 or top < 1:
        raise InputError("--n-queries and --top must be at least 1")
    Xtr, ytr, Xte, yte = split(X, y, n_train, n_queries, seed=0)
    task = Task.classification()
    model = mlp([64, 32, 10], dtype=torch.float64, seed=0)
    t0 = time.perf_counter()
    with stage("training the digits MLP (L-BFGS, weight decay 1e-3)", progress):
        grad_norm = fit_lbfgs(model, task, (Xtr, ytr), weight_decay=WEIGHT_DECAY, max_iter=1500, tol=1e-8)
    acc = float((model(Xte).argmax(1) == yte).double().mean()) if n_queries else float("nan")
    console.print(f"trained 64→32→10 MLP on {n_train} digits in {time.perf_counter() - t0:.1f} s "
                  f"(‖∇R‖ = {grad_norm:.1e})")
    t1 = time.perf_counter()
    attr = Attributor(model, task, curvature="hessian", solver="direct", damping=WEIGHT_DECAY, progress=progress)
    attr.fit((Xtr, ytr))
    scores = attr.score((Xte, yte))
    console.print(f"exact-Hessian influence, {n_queries} queries × {n_train} training examples, "
                  f"in {time.perf_counter() - t1:.1f} s (positive = helpful)")
    with torch.no_grad():
        pred = model(Xte).argmax(1)
    for q in range(n_queries):
        table = Table(title=f"query {q}: label {int(yte[q])}, predicted {int(pred[q])}", title_justify="left")
        for col in ("", "train id", "label", "score"):
            table.add_column(col)
        for name, largest in (("proponent", True), ("opponent", False)):
            vals, idx = scores.top_k(top, largest=largest)
            for v, i in zip(vals[q].tolist(), idx[q].tolist()):
                table.add_row(name, str(scores.train_ids[i]), str(int(ytr[i])), f"{v:+.3g}")
        console.print(table)
    si = attr.self_influence()
    worst = torch.topk(si, 5).indices.tolist()
    console.print("highest self-influence (unusual or possibly mislabelled): "
                  + ", ".join(f"#{i} (label {int(ytr[i])})" for i in worst))
    return {"accuracy": acc, "scores": scores, "self_influence": si}
