"""Retrain a model on a subset of its training data to a strict optimum, for ground-truth evaluation.

Influence functions predict what retraining would do; to check them the retraining itself must be
exact: R(θ) = mean loss + (wd/2)‖θ‖² minimised until ‖∇R‖ < tol (PAPERS.md §5: warm L-BFGS stalls
near 1e-9, so Newton-CG is the default). Results are cached on disk by content hash and can be
computed in worker processes; every retraining runs in float64 on one thread, so the numbers are
bit-identical whatever the number of workers and whether they came from the cache.

`method="adam"` is the other kind of ground truth: a fixed, seeded minibatch recipe (max_iter epochs)
instead of an optimum, for models that are not trained to one (TRAK / Kronfluence-style LDS).
"""
from __future__ import annotations

import copy
import hashlib
import io
import os
import pickle
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import InputError
from ..inputs import as_examples
from ..progress import track
from ..task import Task, batch_size_of, index_batch
from ..train import fit_adam, fit_lbfgs
from .newton import newton_cg

METHODS = ("newton_cg", "lbfgs", "adam")
CACHE_VERSION = "influent-eval-retrain-v1"


class ConvergenceWarning(RuntimeWarning):
    """A retraining stopped with ‖∇R‖ > 10·tol: its outcome is not the optimum the theory assumes."""


class Retrained(NamedTuple):
    """A retrained float64 model copy and the final gradient norm of its objective."""

    model: nn.Module
    grad_norm: float


def default_cache_dir() -> Path:
    """$INFLUENT_CACHE if set, else .cache/influent-eval under the working directory."""
    return Path(os.environ.get("INFLUENT_CACHE") or Path(".cache") / "influent-eval")


@contextmanager
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _to64(batch: Any) -> Any:
    cast = (lambda t: t.detach().cpu().double() if t.is_floating_point() else t.detach().cpu())
    return {k: cast(v) for k, v in batch.items()} if isinstance(batch, dict) else tuple(cast(t) for t in batch)


def _hash_tensors(h: "hashlib._Hash", tensors: Sequence[tuple[str, Tensor]]) -> None:
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _retrain(start: nn.Module, task: Task, data: Any, wd: float, subset: Tensor, method: str, tol: float,
             max_iter: int, recipe: tuple[int, float], noise: float, seed: int) -> tuple[dict[str, Tensor], float]:
    """One retraining from `start` (float64) on data[subset]; returns (state_dict, ‖∇R‖).

    `recipe` is (batch_size, lr) of method "adam", whose batch order follows `seed`."""
    model = copy.deepcopy(start).eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    x0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    if noise:
        g = torch.Generator().manual_seed(int(seed))
        x0 = x0 + noise * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    batch = index_batch(data, subset)
    fixed = {k: v.detach() for k, v in list(model.named_parameters()) + list(model.named_buffers())}

    def unflat(x: Tensor) -> dict[str, Tensor]:
        parts = torch.split(x, [s.numel() for s in shapes])
        return {**fixed, **{n: c.reshape(s) for n, c, s in zip(names, parts, shapes)}}

    def objective(x: Tensor) -> Tensor:
        p = unflat(x)
        loss = task.train_loss(lambda *a: functional_call(model, p, a), batch).mean()
        return loss + 0.5 * wd * (x * x).sum()

    if method == "newton_cg":
        def f_and_grad(x: Tensor) -> tuple[float, Tensor]:
            x = x.detach().requires_grad_(True)
            f = objective(x)
            return float(f.detach()), torch.autograd.grad(f, x)[0]

        def hvp_at(x: Tensor) -> Callable[[Tensor], Tensor]:
            """v -> ∇²R(x) v by double backward through one graph kept for the CG loop."""
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(objective(x), x, create_graph=True)
            return lambda v: torch.autograd.grad(g, x, v, retain_graph=True)[0]

        x, gnorm = newton_cg(f_and_grad, hvp_at, x0, tol, max_iter, max(10, min(2 * x0.numel(), 1000)))
    else:
        with torch.no_grad():
            for n, c in unflat(x0).items():
                if n in names:
                    params[n].copy_(c)
        if method == "adam":
            gnorm = fit_adam(model, task, batch, weight_decay=wd, epochs=max_iter, batch_size=recipe[0],
                             lr=recipe[1], seed=seed)
        else:
            gnorm = fit_lbfgs(model, task, batch, weight_decay=wd, max_iter=max_iter, tol=tol)
        x = torch.cat([params[n].detach().reshape(-1) for n in names])
    with torch.no_grad():
        for n, c in unflat(x).items():
            if n in names:
                params[n].copy_(c)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, float(gnorm)


_WORKER: dict[str, Any] = {}


def _init_worker(payload: bytes) -> None:
    torch.set_num_threads(1)
    _WORKER["job"] = pickle.loads(payload)


def _work(subset: Tensor, noise: float, seed: int) -> tuple[dict[str, Tensor], float]:
    start, task, data, wd, method, tol, max_iter, recipe = _WORKER["job"]
    return _retrain(start, task, data, wd, subset, method, tol, max_iter, recipe, noise, seed)


class Retrainer:
    """Retrains `model` on subsets of `train` to ‖∇R‖ < tol, cached on disk and optionally in parallel.

    Methods: "newton_cg" (default) and "lbfgs" run to ‖∇R‖ < tol within max_iter iterations;
    "adam" runs max_iter epochs of seeded minibatch Adam (`batch_size`, `lr`; the batch order follows
    each retraining's seed) and reports ‖∇R‖ without requiring it to be small.

    Runs on CPU in float64. The cache key covers the start weights, the data, the subset, the task
    name and the options. `workers > 1` spawns processes, so a script that uses it must guard its
    entry point with ``if __name__ == "__main__":`` (as for any spawn-based multiprocessing).

    Example:
        >>> rt = Retrainer(model, Task.classification(), (X, y), weight_decay=1e-2)
        >>> m, gnorm = rt.fit(torch.arange(1, len(X)))   # leave example 0 out
    """

    def __init__(self, model: nn.Module, task: Task, train: Any, weight_decay: float, *, method: str = "newton_cg",
                 tol: float = 1e-10, max_iter: int = 100, warm_start: bool = True,
                 init_state: dict[str, Tensor] | None = None, cache: bool = True,
                 cache_dir: str | Path | None = None, workers: int = 1, progress: bool = False,
                 batch_size: int = 128, lr: float = 1e-3):
        if method not in METHODS:
            raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if not (tol > 0 and isinstance(max_iter, int) and max_iter > 0):
            raise InputError(f"need tol > 0 and max_iter a positive integer, got tol={tol!r}, max_iter={max_iter!r}")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise InputError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
        if not isinstance(workers, int) or workers < 1:
            raise InputError(f"workers must be a positive integer, got {workers!r}")
        if not warm_start and init_state is None:
            raise InputError("warm_start=False needs init_state (the original initialisation's state_dict)")
        if method == "adam" and not (isinstance(batch_size, int) and batch_size > 0 and lr > 0):
            raise InputError(f"method='adam' needs batch_size a positive integer and lr > 0, got {batch_size!r}, {lr!r}")
        self.recipe = (int(batch_size), float(lr))
        self.task, self.weight_decay, self.method, self.tol, self.max_iter = task, float(weight_decay), method, tol, max_iter
        self.workers, self.progress, self.cache = workers, progress, cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.data = _to64(as_examples(train, name="train").data)
        self.n_train = batch_size_of(self.data)
        self.start = copy.deepcopy(model).cpu().double().eval()
        if not warm_start:
            self.start.load_state_dict(init_state)
            self.start.double()
        h = hashlib.sha256(CACHE_VERSION.encode())
        h.update(f"{type(model).__qualname__}|{model}|{task.describe()}|{getattr(task.loss, '__qualname__', '')}".encode())
        _hash_tensors(h, list(self.start.state_dict().items()))
        _hash_tensors(h, list(self.data.items()) if isinstance(self.data, dict) else
                      [(str(i), t) for i, t in enumerate(self.data)])
        h.update(f"{method}|{tol!r}|{max_iter}|{self.weight_decay!r}".encode())
        if method == "adam":
            h.update(f"|{self.recipe[0]}|{self.recipe[1]!r}".encode())
        self._base_key = h.hexdigest()
        self.hits_, self.misses_, self.unconverged_ = 0, 0, []

    # ----- cache -------------------------------------------------------------------------
    def _key(self, subset: Tensor, noise: float, seed: int) -> str:
        h = hashlib.sha256(self._base_key.encode())
        seeded = noise or self.method == "adam"  # the seed moves the start (noise) or the batch order (adam)
        h.update(f"|{float(noise)!r}|{int(seed) if seeded else 0}|".encode())
        h.update(subset.numpy().tobytes())
        return h.hexdigest()

    def _load(self, key: str) -> tuple[dict[str, Tensor], float] | None:
        path = self.cache_dir / f"{key}.pt"
        if not (self.cache and path.exists()):
            return None
        try:
            obj = torch.load(path, weights_only=True)
            return obj["state"], float(obj["grad_norm"])
        except Exception:  # a corrupt entry is recomputed, never trusted
            return None

    def _store(self, key: str, state: dict[str, Tensor], gnorm: float) -> None:
        if not self.cache:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"state": state, "grad_norm": gnorm}, buf)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".pt")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, self.cache_dir / f"{key}.pt")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ----- retraining ----------------------------------------------------------------------
    def _subset(self, subset: Any) -> Tensor:
        idx = torch.as_tensor(subset, dtype=torch.long).reshape(-1)
        if idx.numel() == 0:
            raise InputError("a retraining subset is empty; keep at least one training example")
        if int(idx.min()) < 0 or int(idx.max()) >= self.n_train:
            raise InputError(f"subset indices must lie in [0, {self.n_train}); got {int(idx.min())}..{int(idx.max())}")
        return idx.sort().values.contiguous()

    def _model(self, state: dict[str, Tensor]) -> nn.Module:
        m = copy.deepcopy(self.start)
        m.load_state_dict(state)
        return m.eval()

    def fit(self, subset: Any, *, noise: float = 0.0, seed: int = 0) -> Retrained:
        """Retrain on train[subset] (start perturbed by seeded N(0, noise²) if noise > 0)."""
        return self.fit_many([subset], noise=noise, seeds=[seed], labels=[0], _stacklevel=3)[0]

    def fit_many(self, subsets: Sequence[Any], *, noise: float = 0.0, seeds: Sequence[int] | None = None,
                 labels: Sequence[Any] | None = None, description: str = "retraining",
                 _stacklevel: int = 2) -> list[Retrained]:
        """Retrain on each subset (cache first, then in `workers` processes); warns once on non-convergence.

        `labels` name the retrainings in that warning (e.g. the removed index); default: their position.
        """
        idx = [self._subset(s) for s in subsets]
        seeds = list(seeds) if seeds is not None else list(range(len(idx)))
        labels = list(labels) if labels is not None else list(range(len(idx)))
        if not len(seeds) == len(labels) == len(idx):
            raise InputError("seeds and labels need one entry per subset")
        keys = [self._key(s, noise, sd) for s, sd in zip(idx, seeds)]
        results: list[tuple[dict[str, Tensor], float] | None] = [self._load(k) for k in keys]
        todo = [j for j, r in enumerate(results) if r is None]
        self.hits_ += len(idx) - len(todo)
        self.misses_ += len(todo)
        for j, (state, gnorm) in self._compute(todo, idx, noise, seeds, description):
            self._store(keys[j], state, gnorm)
            results[j] = (state, gnorm)
        bad = [(labels[j], g) for j, (_, g) in enumerate(results)
               if not g <= 10 * self.tol and self.method != "adam"]  # a recipe is not meant to reach an optimum
        if bad:
            self.unconverged_.extend(bad)
            listing = ", ".join(f"{lab} (‖∇R‖={g:.2e})" for lab, g in bad)
            warnings.warn(f"{len(bad)} of {len(idx)} retrainings did not converge to ‖∇R‖ ≤ 10·tol = "
                          f"{10 * self.tol:.1e} within max_iter={self.max_iter} ({self.method}): {listing}. "
                          "Raise max_iter, use method='newton_cg', or check that the objective has a strict "
                          "minimum (weight decay > 0).", ConvergenceWarning, stacklevel=_stacklevel)
        return [Retrained(self._model(s), g) for s, g in results]

    def _compute(self, todo: list[int], idx: list[Tensor], noise: float, seeds: list[int],
                 description: str) -> Iterator[tuple[int, tuple[dict[str, Tensor], float]]]:
        job = (self.start, self.task, self.data, self.weight_decay, self.method, self.tol, self.max_iter, self.recipe)
        if self.workers == 1 or len(todo) <= 1:
            with _one_thread():
                for j in track(todo, len(todo), description, self.progress):
                    yield j, _retrain(*job[:4], idx[j], *job[4:], noise, seeds[j])
            return
        try:
            payload = pickle.dumps(job)
        except Exception as e:
            raise InputError(f"workers > 1 needs a picklable model and task ({e}); define the task's functions "
                             "at module level, or use workers=1") from e
        ctx = torch.multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(self.workers, len(todo)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(payload,)) as pool:
            futures = {pool.submit(_work, idx[j], noise, seeds[j]): j for j in todo}
            for fut in track(as_completed(futures), len(futures), description, self.progress):
                yield futures[fut], fut.result()
