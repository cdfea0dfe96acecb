"""Remove a whole class with one Newton step on the remaining-data objective (PAPERS.md §3).

θ' = θ̂ − s·(H_S + λI)⁻¹ ∇R_rem(θ̂), with R_rem(θ) = (1/(n−k)) Σ_{i∉class} ℓ_i(θ) + (wd/2)‖θ‖², H_S the
curvature of the remaining-data mean loss built on a sampler's subset S of the remaining data, and
s = 1 (pure Newton step) unless a validation split picks it from a grid. Reports test accuracy on
the removed class a_f, on the rest a_r, F1 = 2(1−a_f)a_r/((1−a_f)+a_r), wall time and peak memory,
and the same figures for retraining from scratch when a `retrain` function is given.
"""
from __future__ import annotations

import copy
import resource
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import grad

from ..curvature import make_curvature
from ..errors import InputError
from ..grads import ModelFunction, check_batch, eval_mode
from ..inputs import Examples, as_examples
from ..params import ParamSpace, check_finite_params, param_tensors, select_params
from ..progress import stage
from ..sampling import make_sampler
from ..solvers import make_solver
from ..task import Task, _target

DEFAULT_SCALES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)
STATIONARITY_WARN = 0.1  # ‖∇R(θ̂)‖ / ‖∇R_rem(θ̂)‖ above which the model is not trained enough for a Newton step
EVAL_BATCH = 2048


# ----- metrics ---------------------------------------------------------------------------------
def f1_score(a_f: float, a_r: float) -> float:
    """F1 of forgetting (1 − a_f) and consistency on the remaining classes (a_r); 0 when both are 0."""
    forget = 1.0 - a_f
    return 0.0 if forget + a_r == 0 else 2 * forget * a_r / (forget + a_r)


@torch.no_grad()
def removal_accuracy(model: nn.Module, task: Task, data: Any, label: int) -> tuple[float, float]:
    """(a_f, a_r): accuracy on the examples of `label` and on all others (NaN when a side is empty)."""
    ex = _examples(model, data, "evaluation data")
    hit_f = hit_r = n_f = n_r = 0
    with eval_mode(model):
        for _, batch in ex.batches(EVAL_BATCH):
            y = _target(batch)
            ok = task.forward(model, batch).argmax(1) == y
            is_f = y == label
            hit_f, n_f = hit_f + int(ok[is_f].sum()), n_f + int(is_f.sum())
            hit_r, n_r = hit_r + int(ok[~is_f].sum()), n_r + int((~is_f).sum())
    return (hit_f / n_f if n_f else float("nan"), hit_r / n_r if n_r else float("nan"))


@dataclass
class Outcome:
    """One way of removing the class: its test figures and cost."""

    method: str
    a_f: float
    a_r: float
    f1: float
    seconds: float
    peak_mb: float
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ClassRemoval:
    """The Newton-step removal and, when a retrain function was given, retraining from scratch."""

    label: int
    newton: Outcome
    model: nn.Module
    delta: Tensor          # the Newton direction Δ: the new weights are θ̂ − scale·Δ (see newton.details)
    retrain: Outcome | None = None
    retrained_model: nn.Module | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "newton": self.newton.to_dict(),
                "retrain": self.retrain.to_dict() if self.retrain else None}


# ----- cost measurement ------------------------------------------------------------------------
def _rss_mb(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@contextmanager
def measure(device: torch.device | None = None) -> Iterator[dict]:
    """Wall seconds and peak memory above the starting level (MB) of the enclosed block.

    CPU: the process's resident-set high-water mark, reset at entry through /proc/self/clear_refs
    (Linux); CUDA: torch's peak allocated bytes. The dict is filled on exit. On CPU, memory that an earlier
    step freed into the C allocator's cache is reused without raising the RSS, so the figure can read low
    unless large blocks go straight back to the OS (benchmarks/sampling.py sets glibc's M_MMAP_THRESHOLD).
    """
    out: dict = {}
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
        base = _rss_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        if cuda:
            torch.cuda.synchronize(device)
            out["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            peak = _rss_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            out["peak_mb"] = max(0.0, peak - base)
        out["seconds"] = time.perf_counter() - t0


# ----- the Newton step -------------------------------------------------------------------------
def _examples(model: nn.Module, data: Any, name: str) -> Examples:
    p0 = next(model.parameters())
    return as_examples(data, None, name).to(p0.device, p0.dtype)


def split_class(examples: Examples, label: int) -> tuple[list[int], list[int]]:
    """(positions of `label`, positions of every other class); InputError when the label is absent."""
    y = _target(examples.data)
    if isinstance(label, bool) or not isinstance(label, int):
        raise InputError(f"label must be an integer class index, got {label!r}")
    present = sorted(int(c) for c in torch.unique(y))
    if label not in present:
        raise InputError(f"class {label} does not occur in the training data; its classes are {present}")
    is_f = (y == label).cpu()
    if bool(is_f.all()):
        raise InputError(f"every training example has class {label}; nothing would remain after removing it")
    return is_f.nonzero().flatten().tolist(), (~is_f).nonzero().flatten().tolist()


def objective_gradient(fn: ModelFunction, examples: Examples, weight_decay: float, batch_size: int) -> Tensor:
    """Flat ∇ of (1/n) Σ ℓ_i + (wd/2)‖θ‖² over `examples` at the model's weights."""
    total = torch.zeros(fn.space.numel, dtype=next(iter(fn.params.values())).dtype,
                        device=next(iter(fn.params.values())).device)
    for _, batch in examples.batches(batch_size):
        g = grad(lambda p: fn.losses(p, batch).sum())(fn.params)
        total += fn.space.flatten(g)
    return total / len(examples) + weight_decay * fn.space.flatten(fn.params)


def with_weights(model: nn.Module, space: ParamSpace, flat: Tensor) -> nn.Module:
    """A deep copy of `model` whose selected parameters are the flat vector `flat`."""
    new = copy.deepcopy(model)
    table = dict(new.named_parameters())
    with torch.no_grad():
        for name, t in space.unflatten(flat).items():
            table[name].copy_(t)
    return new


def newton_direction(model: nn.Module, task: Task, remaining: Examples, *, weight_decay: float,
                     damping: float, curvature: Any, solver: Any, sampler: Any, seed: int, batch_size: int,
                     progress: bool = False) -> tuple[ParamSpace, Tensor, dict]:
    """(space, Δ, info) with Δ = (H_S + λI)⁻¹ ∇R_rem(θ̂) (info["gradient"]); the curvature is built on the
    sampler's subset S."""
    space = select_params(model, "all")
    check_finite_params(model, space)
    with eval_mode(model):
        fn = ModelFunction(model, task, space)
        check_batch(fn, remaining.data, "remaining training data")
        smp = make_sampler(sampler)
        with stage("sampling the curvature data", progress):
            pos = list(range(len(remaining))) if smp is None else smp.select(remaining, fn, seed)
        curv_set = remaining if smp is None else remaining.subset(pos)
        with stage("remaining-data gradient", progress):
            g = objective_gradient(fn, remaining, weight_decay, batch_size)
        with stage("curvature", progress):
            op = make_curvature(curvature, fn, curv_set, batch_size=max(batch_size, 512), seed=seed)
        slv = make_solver(solver, curvature_name=curvature if isinstance(curvature, str) else "",
                          size=op.size, seed=seed)
        with stage(f"{slv.name} solve", progress):
            delta = slv.fit(op, damping).solve(g[:, None])[:, 0]
    info = {"curvature_n": len(pos), "curvature_ids": [remaining.ids[i] for i in pos], "gradient": g,
            "gradient_norm": float(g.norm()), "step_norm": float(delta.norm()), "solver": slv.describe()}
    return space, delta, info


def stationarity(model: nn.Module, task: Task, forgotten: Examples, n_remaining: int, space: ParamSpace,
                 g_remaining: Tensor, weight_decay: float, batch_size: int) -> float:
    """‖∇R(θ̂)‖ / ‖∇R_rem(θ̂)‖ on the whole training objective: ≈ 0 at the minimum the Newton step assumes.

    R = (n_f·R_f + n_r·R_rem)/n shares the decay term, so only the removed class needs a new gradient pass.
    """
    with eval_mode(model):
        fn = ModelFunction(model, task, space)
        wd_theta = weight_decay * space.flatten(fn.params)
        g_f = objective_gradient(fn, forgotten, 0.0, batch_size)
    n_f = len(forgotten)
    full = (n_f * g_f + n_remaining * (g_remaining - wd_theta)) / (n_f + n_remaining) + wd_theta
    return float(full.norm() / g_remaining.norm().clamp_min(torch.finfo(full.dtype).tiny))


def choose_scale(model: nn.Module, task: Task, space: ParamSpace, theta: Tensor, delta: Tensor,
                 validation: Any, label: int, scales: Sequence[float]) -> tuple[float, dict]:
    """The step scale with the best validation F1 (ties: the one closest to 1); returns (scale, F1 per scale)."""
    curve = {}
    for s in scales:
        a_f, a_r = removal_accuracy(with_weights(model, space, theta - s * delta), task, validation, label)
        curve[float(s)] = f1_score(a_f, a_r)
    best = max(curve, key=lambda s: (curve[s], -abs(s - 1.0)))
    return best, curve


def _check_options(weight_decay: float, damping: float, scales: Sequence[float] | None, validation: Any) -> None:
    if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise InputError(f"weight_decay must be a number >= 0 (the one the model was trained with), got {weight_decay!r}")
    if not isinstance(damping, (int, float)) or damping < 0:
        raise InputError(f"damping must be a number >= 0, got {damping!r}; use at least the weight decay")
    if scales is not None:
        if validation is None:
            raise InputError("step scales are chosen on a validation split; pass validation=(X_val, y_val) "
                             "(never the test split) or drop scales= for the pure Newton step")
        if not scales or not all(isinstance(s, (int, float)) and s > 0 for s in scales):
            raise InputError(f"scales must be positive numbers, got {scales!r}")


def remove_class(model: nn.Module, task: Task, train: Any, test: Any, label: int, *, weight_decay: float,
                 damping: float | None = None, curvature: Any = "ggn", solver: Any = "cg", sampler: Any = None,
                 validation: Any = None, scales: Sequence[float] | None = None,
                 retrain: Callable[[Any], nn.Module] | None = None, batch_size: int = 512, seed: int = 0,
                 progress: bool = False) -> ClassRemoval:
    """Forget class `label` with one Newton step on the remaining-data objective; optionally compare with retraining.

    `model` is trained on `train` to (near) a minimum of mean loss + (wd/2)‖θ‖². `damping` (default:
    `weight_decay`) is the λ added to the remaining-data curvature; `sampler` picks the curvature data
    from the remaining examples (None: all of them). With `validation`, the step scale is the one of
    `scales` (default DEFAULT_SCALES) with the best validation F1; without it the step is the pure
    Newton step. `retrain(remaining_data) -> model` trains from scratch without the class (timed too).
    Test accuracy is measured on `test`. Warns when the model is far from a minimum of its training
    objective (details["stationarity"] = ‖∇R(θ̂)‖ / ‖∇R_rem(θ̂)‖ above STATIONARITY_WARN).
    """
    damping = weight_decay if damping is None else damping
    if validation is not None and scales is None:
        scales = DEFAULT_SCALES
    _check_options(weight_decay, damping, scales, validation)
    if not isinstance(task, Task) or task.name != "classification":
        raise InputError("class removal needs task=Task.classification()")
    examples = _examples(model, train, "train")
    gone, rest = split_class(examples, label)
    remaining = examples.subset(rest)
    test_ex = _examples(model, test, "test")
    device = next(model.parameters()).device
    with measure(device) as cost:
        space, delta, info = newton_direction(model, task, remaining, weight_decay=weight_decay, damping=damping,
                                              curvature=curvature, solver=solver, sampler=sampler, seed=seed,
                                              batch_size=batch_size, progress=progress)
        theta = space.flatten(param_tensors(model, space))
        scale, curve = 1.0, None
        if validation is not None:
            scale, curve = choose_scale(model, task, space, theta, delta, validation, label, scales)
        new_model = with_weights(model, space, theta - scale * delta)
    a_f, a_r = removal_accuracy(new_model, task, test_ex, label)
    info["stationarity"] = stationarity(model, task, examples.subset(gone), len(remaining), space, info.pop("gradient"),
                                        weight_decay, batch_size)
    if info["stationarity"] > STATIONARITY_WARN:
        warnings.warn(f"the model is not at a minimum of its training objective: ‖∇R(θ̂)‖ is "
                      f"{info['stationarity']:.2f} × the remaining-data gradient the Newton step removes; the step "
                      f"assumes a minimum, so train longer (or check weight_decay={weight_decay}, which must be "
                      "the one used in training) before trusting it", stacklevel=2)
    info.update(scale=scale, validation_f1=curve, n_remaining=len(remaining), damping=float(damping))
    newton = Outcome("newton", a_f, a_r, f1_score(a_f, a_r), cost["seconds"], cost["peak_mb"], info)
    result = ClassRemoval(label, newton, new_model, delta)
    if retrain is not None:
        with measure(device) as cost:
            retrained = retrain(remaining.data)
        if not isinstance(retrained, nn.Module):
            raise InputError(f"retrain must return the retrained nn.Module, got {type(retrained).__name__}")
        a_f, a_r = removal_accuracy(retrained, task, test_ex, label)
        result.retrain = Outcome("retrain", a_f, a_r, f1_score(a_f, a_r), cost["seconds"], cost["peak_mb"],
                                 {"n_remaining": len(remaining)})
        result.retrained_model = retrained
    return result


__all__ = ["ClassRemoval", "DEFAULT_SCALES", "Outcome", "f1_score", "measure", "newton_direction",
           "objective_gradient", "remove_class", "removal_accuracy", "split_class", "stationarity", "with_weights"]
