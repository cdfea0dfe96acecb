"""Memory planner: predict each stage's bytes from shapes before any long work, and refuse early.

The prediction is the process's resident memory now (model, data, runtime) plus the largest
stage's working set plus what stays resident (training rows kept for scoring, the factorised
curvature). Activation memory per example is measured, not guessed: one example's forward pass
is run under `saved_tensors_hooks` and the storage autograd keeps is summed.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import torch

from .errors import InputError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class MemoryBudgetError(InputError):
    """The predicted peak exceeds the memory budget; the message says what would fit."""


def parse_bytes(value: int | float | str) -> int:
    """8_000_000_000, "8GB", "512 MiB" -> bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise InputError(f"memory budget {value!r} is not a size; write e.g. memory='8GB' or '512MiB' or bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def resident_bytes() -> int:
    """This process's resident set size now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def activation_bytes(fn, batch) -> int:
    """Bytes autograd saves for one backward pass of the training loss on `batch` (measured; the
    parameters themselves, which autograd also saves, are not counted)."""
    storages: dict[int, int] = {}
    params = {n: p.detach().requires_grad_(True) for n, p in fn.params.items()}
    weights = {p.untyped_storage().data_ptr() for p in params.values()}

    def pack(t: torch.Tensor):
        if t.untyped_storage().data_ptr() not in weights:  # views of the same data count once
            storages[t.data_ptr()] = max(storages.get(t.data_ptr(), 0), t.numel() * t.element_size())
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn.losses(params, batch).sum()
    return sum(storages.values())


@dataclass
class MemoryPlan:
    """Predicted bytes per stage and the peak; `fits` against the budget (None: no budget)."""

    base: int
    stages: dict[str, int]
    resident: dict[str, int]
    budget: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return self.base + sum(self.resident.values()) + max(self.stages.values(), default=0)

    @property
    def fits(self) -> bool:
        return self.budget is None or self.peak <= self.budget

    def describe(self) -> dict:
        return {"base": self.base, "stages": self.stages, "resident": self.resident, "peak": self.peak,
                "budget": self.budget}


HVP_VECTORS = 32          # vectors per vmapped product (curvature.exact.VMAP_CHUNK)
LINEARIZED_EXAMPLES = 8192  # examples whose linearisation is cached (curvature.exact.LINEARIZE_MAX_EXAMPLES)


def curvature_bytes(curvature: str, solver: str, P: int, width: int, layers: list[tuple[int, int]] | None,
                    n_query: int, iterations: int = 200, rank: int = 100, n_curv: int = 0,
                    act_per_example: int = 0) -> tuple[int, int]:
    """(working bytes while fitting, bytes kept afterwards) of the curvature + solver, float64.

    Exact curvatures (Hessian, GGN, Fisher) on uncompressed gradients are products through the model:
    each vmapped product keeps the activations of the cached examples once per vector."""
    if curvature == "identity" or solver == "identity":
        return 0, 0
    products = 0
    if width == P and curvature in ("hessian", "ggn", "fisher"):
        products = HVP_VECTORS * min(n_curv, LINEARIZED_EXAMPLES) * act_per_example * 2
    if curvature in ("kfac", "ekfac") and layers:
        kron = sum(o * o + a * a for o, a in layers) * 8
        eig = sum(o * a for o, a in layers) * 8 if curvature == "ekfac" else 0
        return 3 * kron + eig, 2 * kron + eig
    if solver == "direct":
        return 3 * width * width * 8 + products, width * width * 8
    if solver == "arnoldi":
        return (iterations + 2) * width * 8 + iterations ** 2 * 8 + products, rank * width * 8
    return 8 * width * max(n_query, 1) * 8 + products, 0  # cg / lissa: a few [P, m] blocks


def plan(*, P: int, width: int, n_train: int, n_query: int, itemsize: int, rows: int, act_per_example: int,
         curvature: str, solver: str, layers: list[tuple[int, int]] | None, keep_rows: bool,
         full_scores: bool, top_k: int = 10, base: int | None = None, budget: int | str | None = None,
         factored: bool = False) -> MemoryPlan:
    """Predict the peak of fit + score. `width` is k with compression, else P."""
    fit_work, kept = curvature_bytes(curvature, solver, P, width, layers, n_query, n_curv=n_train,
                                     act_per_example=act_per_example)
    grad_row = (0 if factored else P * itemsize * 2) + act_per_example
    stages = {"gradients": rows * grad_row + rows * width * itemsize, "curvature": fit_work,
              "scoring": n_query * (width * 8 + grad_row) + (n_query * n_train * itemsize if full_scores
                                                              else n_query * top_k * 16)}
    resident = {"training rows": n_train * width * itemsize if keep_rows else 0, "curvature": kept}
    p = MemoryPlan(resident_bytes() if base is None else base, stages, resident,
                   None if budget is None else parse_bytes(budget))
    return p


def refuse(p: MemoryPlan, *, width: int, P: int, n_train: int, n_query: int, itemsize: int) -> None:
    """Raise MemoryBudgetError naming the stage that does not fit and what would."""
    if p.fits:
        return
    worst = max({**p.stages, **{f"kept {k}": v for k, v in p.resident.items()}}.items(), key=lambda kv: kv[1])
    spare = max(p.budget - p.base, 0)
    hints = []
    k_fit = int(math.sqrt(spare / 24)) if spare else 0
    if width == P and k_fit:
        hints.append(f"compress to k ≤ {min(k_fit, spare // max(n_train * itemsize, 1)):,} "
                     "(compress=Dropout(k, level='neuron'))")
    if p.stages["scoring"] > spare / 2:
        hints.append("use attr.top_k(query, k) instead of the full score matrix")
    if p.resident["training rows"]:
        hints.append("write training rows to a store (fit(train, store='dir')) so scoring streams them")
    raise MemoryBudgetError(
        f"predicted peak {human(p.peak)} exceeds the memory budget {human(p.budget)} (already resident "
        f"{human(p.base)}; largest part: {worst[0]} {human(worst[1])}); "
        + ("; or ".join(hints) if hints else "raise the budget or use a smaller curvature (ekfac, arnoldi)"))


def check_attributor(attr, examples, n_query: int, full_scores: bool) -> MemoryPlan:
    """The memory plan of an Attributor's configuration on `examples`; MemoryBudgetError when over its `memory`."""
    width = attr.compressor_.k_ if attr.compressor_ is not None else attr.space_.numel
    itemsize = torch.finfo(attr._compute_dtype).bits // 8
    n = len(examples)
    keep = n * width * itemsize <= attr.cache_bytes
    curv = attr.curvature if isinstance(attr.curvature, str) else "custom"
    solver = attr.solver if isinstance(attr.solver, str) else getattr(attr.solver, "name", "custom")
    layers = [(l.out, l.d_a) for l in attr.factor_layers_] if attr.factor_layers_ else None
    if n_query == 0 or getattr(attr, "activation_bytes_", None) is None:  # measured at fit, reused by score
        attr.activation_bytes_ = activation_bytes(attr.fn_, next(examples.batches(1))[1]) if n else 0
    act = attr.activation_bytes_
    rows = attr._rows() if attr.compressor_ is None else attr.batch_size
    p = plan(P=attr.space_.numel, width=width, n_train=n, n_query=n_query, itemsize=itemsize, rows=rows,
             act_per_example=act, curvature=curv, solver=solver, layers=layers, keep_rows=keep,
             full_scores=full_scores, budget=attr.memory,
             factored=attr.factor_layers_ is not None and attr.compressor_ is not None)
    refuse(p, width=width, P=attr.space_.numel, n_train=n, n_query=n_query, itemsize=itemsize)
    return p
