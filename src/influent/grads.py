"""Per-example gradients and loss-vector Jacobian products, with torch.func.

Everything here is functional: the model's selected parameters are passed as a dict, the rest
of its state (frozen parameters, buffers such as BatchNorm statistics) is read from the module.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator
import warnings

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from .errors import InputError, NumericalError
from .finite import all_finite
from .params import ParamSpace, param_tensors
from .task import Batch, Task


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluate in eval mode (dropout off, BatchNorm frozen), warning if the model was training."""
    was_training = model.training
    if was_training:
        warnings.warn("the model was in train mode; influent evaluates it in eval mode (dropout off, "
                      "BatchNorm statistics frozen). Call model.eval() to silence this.", stacklevel=3)
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _unsqueeze(example: Batch) -> Batch:
    if isinstance(example, dict):
        return {k: v.unsqueeze(0) for k, v in example.items()}
    return tuple(t.unsqueeze(0) for t in example)


class ModelFunction:
    """The model as pure functions of the selected parameters: losses, outputs, gradients."""

    def __init__(self, model: nn.Module, task: Task, space: ParamSpace):
        self.model, self.task, self.space = model, task, space
        self.params = param_tensors(model, space)

    def _call(self, p: dict[str, Tensor]) -> Callable:
        return lambda *args, **kw: functional_call(self.model, p, args, kw)

    # ----- scalar / vector losses --------------------------------------------------------
    def losses(self, p: dict[str, Tensor], batch: Batch, query: bool = False) -> Tensor:
        fn = self.task.query_loss if query else self.task.train_loss
        return fn(self._call(p), batch)

    def outputs(self, p: dict[str, Tensor], batch: Batch) -> Tensor:
        return self.task.forward(self._call(p), batch)

    def mean_loss(self, p: dict[str, Tensor], batch: Batch) -> Tensor:
        return self.losses(p, batch).mean()

    # ----- per-example gradients ---------------------------------------------------------
    def per_example_grads(self, batch: Batch, query: bool = False, check: bool = True) -> Tensor:
        """Flat per-example gradients [B, P] of the training loss (or of the query measurement)."""

        def one(p: dict[str, Tensor], example: Batch) -> Tensor:
            return self.losses(p, _unsqueeze(example), query=query)[0]

        g = vmap(grad(one), in_dims=(None, 0))(self.params, batch)
        flat = self.space.flatten(g, batch_dims=1)
        if check and not all_finite(flat):
            raise NumericalError("a per-example gradient is NaN or Inf; check the inputs and the loss "
                                 "(e.g. log of 0) and that the model is not diverged")
        return flat

    # ----- Jacobian products of the per-example loss vector --------------------------------
    def loss_jvp(self, batch: Batch, v: dict[str, Tensor], loss_fn: Callable | None = None) -> Tensor:
        """J v for the per-example loss vector: [B] directional derivatives g_i · v."""
        fn = loss_fn or (lambda p: self.losses(p, batch))
        return jvp(fn, (self.params,), (v,))[1]

    def loss_vjp(self, batch: Batch, w: Tensor, loss_fn: Callable | None = None) -> dict[str, Tensor]:
        """Jᵀ w for the per-example loss vector: Σ_i w_i g_i as a parameter dict."""
        fn = loss_fn or (lambda p: self.losses(p, batch))
        _, pull = vjp(fn, self.params)
        return pull(w)[0]

    def hvp(self, batch: Batch, v: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hessian-vector product of the batch mean loss (forward-over-reverse)."""
        return jvp(grad(lambda p: self.mean_loss(p, batch)), (self.params,), (v,))[1]


def check_batch(fn: ModelFunction, batch: Batch, what: str) -> None:
    """Run the task once on a couple of examples so shape and label errors surface early."""
    from .task import batch_size_of, index_batch, _target

    small = index_batch(batch, slice(0, min(2, batch_size_of(batch))))
    try:
        with torch.no_grad():
            out = fn.outputs(fn.params, small)
            if fn.task.name == "classification":
                y = _target(batch)
                if y.is_floating_point():
                    raise InputError(f"{what}: classification labels must be integer class indices, got {y.dtype}; "
                                     "convert with y.long()")
                if out.dim() != 2:
                    raise InputError(f"{what}: classification expects logits [B, C], the model returned "
                                     f"{tuple(out.shape)}; use Task.regression() or a custom Task")
                if int(y.min()) < 0 or int(y.max()) >= out.shape[1]:
                    raise InputError(f"{what}: labels span [{int(y.min())}, {int(y.max())}] but the model has "
                                     f"{out.shape[1]} outputs; labels must lie in [0, {out.shape[1] - 1}]")
            fn.losses(fn.params, small)
    except InputError:
        raise
    except (RuntimeError, IndexError, TypeError, ValueError) as e:
        raise InputError(f"{what}: the model and task failed on the first examples ({type(e).__name__}: "
                         f"{str(e).splitlines()[0]}); check the input shape, dtype and device against the model") from e
