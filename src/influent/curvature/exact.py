"""Exact curvatures of the MEAN training loss on a curvature set, as matrix-free operators.

Each operator averages per-batch products weighted by batch size, so the result is the curvature
of (1/n) Σ ℓ_i whatever the batch size. Blocks of vectors are pushed through `vmap`.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap
from torch.func import linearize as _torch_linearize

from ..errors import InputError
from ..grads import ModelFunction
from ..inputs import Examples
from ..task import batch_size_of, sampled_output_grads
from .operator import LinearOperator

VMAP_CHUNK = 32           # vectors per vmapped product: small blocks stay in cache
LINEARIZE_MAX_EXAMPLES = 8192  # cache linearised products (primal saved once) up to this many examples


def linearize(f, params):
    """torch.func.linearize without the harmless torch.fx const-folding warning it prints."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
        return _torch_linearize(f, params)


class _BatchedCurvature(LinearOperator):
    """Shared machinery: batches of the curvature set, weights n_b / n, vmapped matmat."""

    kind = "base"

    def __init__(self, fn: ModelFunction, examples: Examples, batch_size: int = 512):
        p0 = next(iter(fn.params.values()))
        super().__init__(fn.space.numel, p0.dtype, p0.device)
        if len(examples) == 0:
            raise InputError("the curvature set is empty; pass training data (or a larger sampler budget)")
        self.fn, self.examples = fn, examples
        self.batches = [b for _, b in examples.batches(batch_size)]
        self.n = len(examples)
        self._linear: dict[int, object] = {}
        self._cache_linear = self.n <= LINEARIZE_MAX_EXAMPLES

    def _linearized(self, i: int, batch):
        """A cached map v -> curvature·v for batch i whose primal pass is computed once, or None."""
        return None

    def minibatch(self, batch_size: int, generator: torch.Generator) -> "_BatchedCurvature":
        """The same curvature on `batch_size` examples drawn without replacement (stochastic LiSSA)."""
        import copy

        pos = torch.randperm(self.n, generator=generator)[: min(batch_size, self.n)].sort().values.tolist()
        sub = copy.copy(self)
        sub.examples = self.examples.subset(pos)
        sub.batches, sub.n = [sub.examples.data], len(pos)
        sub._linear, sub._cache_linear = {}, False       # a fresh draw each step: tracing would not pay off
        for cache in ("_sqrt", "_cache"):
            if hasattr(sub, cache):
                setattr(sub, cache, {})
        return sub

    def _batch_product(self, batch, v: dict[str, Tensor], state) -> dict[str, Tensor]:
        """Mean-over-batch curvature times one vector v (a parameter dict)."""
        raise NotImplementedError

    def _batch_state(self, i: int, batch):
        return None

    def _matmat(self, V: Tensor) -> Tensor:
        out = torch.zeros_like(V)
        space = self.fn.space
        for i, batch in enumerate(self.batches):
            w = batch_size_of(batch) / self.n
            lin = self._linearized(i, batch) if self._cache_linear else None
            if lin is not None:
                prod = vmap(lambda v: space.flatten(lin(space.unflatten(v))), chunk_size=VMAP_CHUNK)
            else:
                state = self._batch_state(i, batch)
                prod = vmap(lambda v: space.flatten(self._batch_product(batch, space.unflatten(v), state)),
                            chunk_size=VMAP_CHUNK)
            out += w * prod(V.T).T
        return out

    def describe(self) -> dict:
        return {"curvature": self.kind, "n": self.n, "size": self.size}


class Hessian(_BatchedCurvature):
    """Exact Hessian of the mean training loss (forward-over-reverse HVPs)."""

    kind = "hessian"

    def _batch_product(self, batch, v, state):
        return self.fn.hvp(batch, v)

    def _linearized(self, i, batch):
        # linearize(grad) traces the gradient once and replays only its tangent: ~2× faster HVPs
        if i not in self._linear:
            self._linear[i] = linearize(grad(lambda p: self.fn.mean_loss(p, batch)), self.fn.params)[1]
        return self._linear[i]


class GGN(_BatchedCurvature):
    """Generalised Gauss-Newton Jᵀ H_out J of the mean loss; needs the task's output Hessian."""

    kind = "ggn"

    def __init__(self, fn: ModelFunction, examples: Examples, batch_size: int = 512):
        if fn.task.output_hessian_sqrt is None:
            raise InputError("curvature='ggn' needs a task with an output Hessian (Task.classification() or "
                             "Task.regression()); use curvature='hessian' or 'empirical_fisher' for a custom task")
        super().__init__(fn, examples, batch_size)
        self._sqrt: dict[int, Tensor] = {}

    def _batch_state(self, i, batch):
        if i not in self._sqrt:
            with torch.no_grad():
                out = self.fn.outputs(self.fn.params, batch)
                L = self.fn.task.output_hessian_sqrt(out, batch)  # [B, C, R]
                self._sqrt[i] = L @ L.transpose(1, 2)              # H_out = L Lᵀ, [B, C, C]
        return self._sqrt[i]

    def _batch_product(self, batch, v, L):
        f = lambda p: self.fn.outputs(p, batch)
        out, jv = jvp(f, (self.fn.params,), (v,))
        return self._pull_back(f, out, self._weigh(L, jv.reshape(out.shape[0], -1)))

    @staticmethod
    def _weigh(H_out: Tensor, jv: Tensor) -> Tensor:
        return torch.einsum("bcd,bd->bc", H_out, jv)  # H_out J v per example

    def _pull_back(self, f, out: Tensor, w: Tensor, pull=None) -> dict[str, Tensor]:
        pull = pull or vjp(f, self.fn.params)[1]
        return {k: t / out.shape[0] for k, t in pull(w.reshape(out.shape))[0].items()}

    def _linearized(self, i, batch):
        # J v through a traced linearisation and Jᵀ w through one saved pullback: no repeated forwards
        if i not in self._linear:
            f = lambda p: self.fn.outputs(p, batch)
            out, lin = linearize(f, self.fn.params)
            pull, state = vjp(f, self.fn.params)[1], self._batch_state(i, batch)
            self._linear[i] = lambda v: self._pull_back(f, out, self._weigh(state, lin(v).reshape(out.shape[0], -1)), pull)
        return self._linear[i]


class _OuterProductCurvature(_BatchedCurvature):
    """(1/n) Σ_i u_i u_iᵀ where u_i = Jᵀ r_i for a per-example output-space vector r_i."""

    def _residuals(self, i: int, batch) -> Tensor:
        raise NotImplementedError

    def _batch_state(self, i, batch):
        if i not in self._cache:
            self._cache[i] = self._residuals(i, batch)
        return self._cache[i]

    def _batch_product(self, batch, v, R):
        f = lambda p: self.fn.outputs(p, batch)
        out, jv = jvp(f, (self.fn.params,), (v,))
        return self._outer(R, jv, out, vjp(f, self.fn.params)[1])

    @staticmethod
    def _outer(R: Tensor, jv: Tensor, out: Tensor, pull) -> dict[str, Tensor]:
        """(1/B) Σ_i Jᵢᵀ r_i (r_i · Jᵢ v), averaged over the S label samples in R [S, B, C]."""
        B = out.shape[0]
        s = (R * jv.reshape(1, B, -1)).sum(-1)
        w = (R * s[..., None]).sum(0) / R.shape[0]
        return {k: t / B for k, t in pull(w.reshape(out.shape))[0].items()}

    def _linearized(self, i, batch):
        if i not in self._linear:
            f = lambda p: self.fn.outputs(p, batch)
            out, lin = linearize(f, self.fn.params)
            pull, R = vjp(f, self.fn.params)[1], self._batch_state(i, batch)
            self._linear[i] = lambda v: self._outer(R, lin(v), out, pull)
        return self._linear[i]


class Fisher(_OuterProductCurvature):
    """True Fisher: labels sampled from the model (seeded), `n_samples` draws per example."""

    kind = "fisher"

    def __init__(self, fn: ModelFunction, examples: Examples, batch_size: int = 512,
                 seed: int = 0, n_samples: int = 1, start: int = 0):
        # start: global position of the first example (a rank's shard), so labels match one process
        if fn.task.sampled_output_grad is None:
            raise InputError("curvature='fisher' needs a task that can sample labels (Task.classification() or "
                             "Task.regression()); use curvature='empirical_fisher' for a custom task")
        super().__init__(fn, examples, batch_size)
        self.seed, self.n_samples, self._cache, self.start = seed, n_samples, {}, int(start)

    def dense(self, chunk: int = 256, dtype: torch.dtype | None = None) -> Tensor:
        """Σ_s G̃_sᵀ G̃_s / (n·S) from per-example gradients at the sampled labels."""
        self._check_dense_size()
        out = torch.zeros(self.size, self.size, dtype=dtype or self.dtype, device=self.device)
        for i, batch in enumerate(self.batches):
            for r in self._batch_state(i, batch):
                G = self._pseudo_grads(batch, r).to(out.dtype)
                out += G.T @ G
        return out / (self.n * self.n_samples)

    def _pseudo_grads(self, batch, r: Tensor) -> Tensor:
        from ..compressed import pseudo_grads
        return pseudo_grads(self.fn, batch, r)

    def _residuals(self, i, batch):
        start = getattr(self, "start", 0) + sum(batch_size_of(b) for b in self.batches[:i])
        with torch.no_grad():
            out = self.fn.outputs(self.fn.params, batch)
            return torch.stack([sampled_output_grads(self.fn.task, out, batch, self.seed, start, sample=s)
                                for s in range(self.n_samples)])


class EmpiricalFisher(_BatchedCurvature):
    """Empirical Fisher (1/n) Σ g_i g_iᵀ with the true labels; works for any task."""

    kind = "empirical_fisher"

    def dense(self, chunk: int = 256, dtype: torch.dtype | None = None) -> Tensor:
        """Gᵀ G / n from per-example gradients: n·P² work instead of P matrix-vector products."""
        self._check_dense_size()
        out = torch.zeros(self.size, self.size, dtype=dtype or self.dtype, device=self.device)
        for batch in self.batches:
            G = self.fn.per_example_grads(batch).to(out.dtype)
            out += G.T @ G
        return out / self.n

    def _batch_product(self, batch, v, state):
        B = batch_size_of(batch)
        s = self.fn.loss_jvp(batch, v)
        return {k: t / B for k, t in self.fn.loss_vjp(batch, s).items()}

    def _linearized(self, i, batch):
        if i not in self._linear:
            f = lambda p: self.fn.losses(p, batch)
            _, lin = linearize(f, self.fn.params)
            pull, B = vjp(f, self.fn.params)[1], batch_size_of(batch)
            self._linear[i] = lambda v: {k: t / B for k, t in pull(lin(v))[0].items()}
        return self._linear[i]
