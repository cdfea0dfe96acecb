"""Tasks: what the training loss is (curvature, training gradients) and what a query measures.

A task splits a model call into ``forward(model, batch) -> outputs`` and per-example functions
of the outputs, so the same task serves per-example gradients, GGN/Fisher curvature (which need
the loss as a function of the outputs) and K-FAC. Every function returns one value per example.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError

Batch = Any  # a tuple/list of tensors, or a dict of tensors, with the example axis first
MEASUREMENTS = ("loss", "margin", "log_prob", "prob")


def _default_forward(model: Callable, batch: Batch) -> Tensor:
    """Call the model on the first element of a tuple batch, or on a dict's 'input'/'x'."""
    if isinstance(batch, dict):
        for key in ("input", "inputs", "x"):
            if key in batch:
                return model(batch[key])
        raise InputError("dict batch has no 'input' or 'x' key; pass Task(forward=...) to say how to call the model")
    return model(batch[0])


def _target(batch: Batch) -> Tensor:
    if isinstance(batch, dict):
        for key in ("target", "targets", "label", "labels", "y"):
            if key in batch:
                return batch[key]
        raise InputError("dict batch has no 'target' or 'y' key; pass a custom Task to say where the labels are")
    return batch[1]


def _ce_loss(outputs: Tensor, batch: Batch) -> Tensor:
    return F.cross_entropy(outputs, _target(batch), reduction="none")


def _true_logit(outputs: Tensor, batch: Batch) -> Tensor:
    return outputs.gather(1, _target(batch)[:, None]).squeeze(1)


def _margin(outputs: Tensor, batch: Batch) -> Tensor:
    y = _target(batch)[:, None]
    others = outputs.scatter(1, y, float("-inf"))
    return outputs.gather(1, y).squeeze(1) - others.amax(1)


def _log_prob(outputs: Tensor, batch: Batch) -> Tensor:
    return -_ce_loss(outputs, batch)


def _prob(outputs: Tensor, batch: Batch) -> Tensor:
    return torch.exp(-_ce_loss(outputs, batch))


def _ce_hessian_sqrt(outputs: Tensor, batch: Batch) -> Tensor:
    """L with L Lᵀ = diag(p) − p pᵀ: the CE Hessian w.r.t. the logits, per example [B, C, C]."""
    p = torch.softmax(outputs.detach(), dim=-1)
    sp = p.sqrt()
    return torch.diag_embed(sp) - p[:, :, None] * sp[:, None, :]


def _lm_fields(batch: Batch) -> tuple[Tensor, Tensor | None, Tensor]:
    """(input_ids, attention_mask or None, labels with -100 where a token is not scored) of an LM batch."""
    if isinstance(batch, dict):
        if "input_ids" not in batch:
            raise InputError("a language-modeling batch needs an 'input_ids' key (and optionally "
                             "'attention_mask' and 'labels' with -100 on tokens that are not scored)")
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        labels = batch.get("labels")
    else:
        ids, mask = batch[0], (batch[1] if len(batch) > 1 else None)
        labels = batch[2] if len(batch) > 2 else None
    if labels is None:
        labels = ids if mask is None else ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def _lm_forward(model: Callable, batch: Batch) -> Tensor:
    """Logits [B, T, V] of a causal LM (a Hugging Face model's `.logits`, or a plain module's output)."""
    ids, mask, _ = _lm_fields(batch)
    out = model(input_ids=ids, attention_mask=mask) if mask is not None else model(ids)
    return out.logits if hasattr(out, "logits") else out


def _lm_loss(outputs: Tensor, batch: Batch) -> Tensor:
    """Per-sequence mean next-token cross-entropy over the scored (label ≠ −100) tokens."""
    _, _, labels = _lm_fields(batch)
    target = labels[:, 1:]
    valid = target != -100
    logits = outputs[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.clamp_min(0).reshape(-1),
                         reduction="none").view(target.shape)
    return (ce * valid).sum(1) / valid.sum(1).clamp_min(1)


def example_uniforms(seed: int, start: int, stop: int, width: int) -> Tensor:
    """Uniforms in [0, 1) for examples start..stop-1, [B, width], float64.

    Drawn per example position from one seeded stream, so a label sampled for example j is the
    same whatever the batch size (DESIGN.md: bit-identical results across batch sizes).
    """
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand(stop, width, generator=g, dtype=torch.float64)[start:stop]


def sampled_output_grads(task: "Task", outputs: Tensor, batch: Batch, seed: int, start: int,
                         sample: int = 0) -> Tensor:
    """The task's output gradient at labels sampled from the model for examples start.., [B, C].

    The one place where the seed becomes per-example uniforms, so the true Fisher, K-FAC's
    sampled Fisher and the compressed Fisher draw the same labels for the same seed.
    """
    B, C = outputs.shape[0], outputs[0].numel()
    u = example_uniforms(seed * 1009 + sample, start, start + B, C)
    return task.sampled_output_grad(outputs, batch, u).reshape(B, -1)


def _ce_sampled_grad(outputs: Tensor, batch: Batch, uniforms: Tensor) -> Tensor:
    """d loss / d logits at a label drawn from the model (inverse CDF of u): p − e_ỹ, [B, C]."""
    p = torch.softmax(outputs.detach(), dim=-1)
    cdf = p.double().cumsum(-1).cpu()
    y = (cdf < uniforms[:, :1]).sum(-1).clamp(max=p.shape[-1] - 1).to(p.device)
    return p - F.one_hot(y, p.shape[-1]).to(p.dtype)


def _sq_loss(outputs: Tensor, batch: Batch) -> Tensor:
    r = outputs - _target(batch).reshape(outputs.shape).to(outputs.dtype)
    return 0.5 * r.reshape(r.shape[0], -1).pow(2).sum(1)


def _sq_hessian_sqrt(outputs: Tensor, batch: Batch) -> Tensor:
    B, C = outputs.shape[0], outputs[0].numel()
    return torch.eye(C, dtype=outputs.dtype, device=outputs.device).expand(B, C, C)


def _sq_sampled_grad(outputs: Tensor, batch: Batch, uniforms: Tensor) -> Tensor:
    """Gaussian noise ε ~ N(0, I) from uniforms (the squared loss's output gradient at y ~ model)."""
    C = outputs[0].numel()
    u = uniforms[:, :C].clamp(1e-12, 1 - 1e-12)
    noise = 2 ** 0.5 * torch.erfinv(2 * u - 1)
    return noise.to(outputs.dtype).to(outputs.device)


@dataclass(frozen=True)
class Task:
    """A training loss and a measurement, both per example, as functions of the model outputs.

    ``loss(outputs, batch) -> [B]`` drives the curvature and the training gradients.
    ``measure(outputs, batch) -> [B]`` is what a query asks about (default: the loss).
    ``higher_is_better`` orients it so that a positive score always means "helpful".
    ``output_hessian_sqrt`` / ``sampled_output_grad`` are optional: they enable GGN-based
    K-FAC and the true Fisher; without them those curvatures raise a clear error.
    """

    loss: Callable[[Tensor, Batch], Tensor]
    measure: Callable[[Tensor, Batch], Tensor] | None = None
    higher_is_better: bool = False
    forward: Callable[[Callable, Batch], Tensor] = _default_forward
    output_hessian_sqrt: Callable[[Tensor, Batch], Tensor] | None = None
    sampled_output_grad: Callable[[Tensor, Batch, Tensor], Tensor] | None = None  # (outputs, batch, uniforms [B, C])
    name: str = "custom"
    options: dict = field(default_factory=dict)

    # ----- presets -------------------------------------------------------------------------
    @classmethod
    def classification(cls, measurement: str = "loss") -> "Task":
        """Per-example cross-entropy on (x, y) batches; measurement: loss | margin | log_prob | prob."""
        table = {
            "loss": (None, False),
            "margin": (_margin, True),
            "log_prob": (_log_prob, True),
            "prob": (_prob, True),
        }
        if measurement not in table:
            raise InputError(f"unknown measurement {measurement!r}; choose one of {', '.join(MEASUREMENTS)}")
        measure, hib = table[measurement]
        return cls(loss=_ce_loss, measure=measure, higher_is_better=hib,
                   output_hessian_sqrt=_ce_hessian_sqrt, sampled_output_grad=_ce_sampled_grad,
                   name="classification", options={"measurement": measurement})

    @classmethod
    def regression(cls) -> "Task":
        """Per-example 0.5·‖f(x) − y‖² on (x, y) batches (output Hessian = identity)."""
        return cls(loss=_sq_loss, output_hessian_sqrt=_sq_hessian_sqrt,
                   sampled_output_grad=_sq_sampled_grad, name="regression")

    @classmethod
    def language_modeling(cls) -> "Task":
        """Causal LM on token batches: per-sequence mean next-token loss, padding (attention_mask 0)
        and labels of −100 not scored. Batches: {"input_ids", "attention_mask"?, "labels"?} or a tuple
        (input_ids, attention_mask?, labels?). Use labels to score only a completion after a prompt."""
        return cls(loss=_lm_loss, forward=_lm_forward, name="language_modeling")

    @classmethod
    def from_callables(cls, train_loss: Callable[[Callable, Batch], Tensor],
                       measurement: Callable[[Callable, Batch], Tensor] | None = None,
                       higher_is_better: bool = False) -> "Task":
        """A task from two functions of (model, batch) -> [B]; no GGN/Fisher/K-FAC support."""
        return cls(loss=lambda out, b: train_loss(out, b),
                   measure=None if measurement is None else (lambda out, b: measurement(out, b)),
                   higher_is_better=higher_is_better,
                   forward=lambda model, batch: model, name="custom")

    # ----- per-example values --------------------------------------------------------------
    def train_loss(self, model: Callable, batch: Batch) -> Tensor:
        """Per-example training loss [B]."""
        return self.loss(self.forward(model, batch), batch)

    def query_loss(self, model: Callable, batch: Batch) -> Tensor:
        """Per-example measurement oriented as a loss (lower is better), [B]."""
        outputs = self.forward(model, batch)
        if self.measure is None:
            return self.loss(outputs, batch)
        value = self.measure(outputs, batch)
        return -value if self.higher_is_better else value

    @property
    def has_output_structure(self) -> bool:
        return self.output_hessian_sqrt is not None

    def describe(self) -> dict:
        return {"name": self.name, **self.options}


def batch_size_of(batch: Batch) -> int:
    """Number of examples in a batch (the leading dimension of its first tensor)."""
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return int(first.shape[0])


def index_batch(batch: Batch, index: Tensor | slice | Sequence[int]) -> Batch:
    """Select examples from every tensor of a batch."""
    if isinstance(batch, dict):
        return {k: v[index] for k, v in batch.items()}
    return type(batch)(t[index] for t in batch) if isinstance(batch, tuple) else [t[index] for t in batch]
