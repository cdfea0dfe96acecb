"""Which parameters are attributed, and one flat view of them with a stable order."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor, nn

from .errors import InputError
from .finite import all_finite

ParamSelection = Union[str, Sequence[str], nn.Module]


@dataclass(frozen=True)
class ParamSpace:
    """The selected parameters: names (model order), shapes and offsets into the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for s in self.sizes:
            out.append(acc)
            acc += s
        return tuple(out)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, tensors: dict[str, Tensor], batch_dims: int = 0) -> Tensor:
        """Concatenate per-name tensors [*batch, *shape] into [*batch, P]."""
        parts = []
        for name in self.names:
            t = tensors[name]
            parts.append(t.reshape(*t.shape[:batch_dims], -1))
        return torch.cat(parts, dim=batch_dims)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split [..., P] back into a dict of [..., *shape]."""
        lead = flat.shape[:-1]
        chunks = torch.split(flat, list(self.sizes), dim=-1)
        return {n: c.reshape(*lead, *s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def describe(self) -> dict:
        return {"names": list(self.names), "numel": self.numel}


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    # named_parameters drops tied duplicates, so a shared weight counts once.
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _last_module_with_params(model: nn.Module) -> str:
    last = None
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            last = name
    if last is None:
        raise InputError("the model has no trainable parameters; unfreeze some (requires_grad=True)")
    return last


def select_params(model: nn.Module, params: ParamSelection = "all") -> ParamSpace:
    """Resolve a selection ("all", "last", names/regexes, a submodule) into a ParamSpace.

    Frozen parameters (requires_grad=False) are never selected.
    """
    trainable = _trainable(model)
    if not trainable:
        raise InputError("the model has no trainable parameters; unfreeze some (requires_grad=True)")
    if isinstance(params, nn.Module):
        ids = {id(p) for p in params.parameters()}
        chosen = [n for n, p in trainable.items() if id(p) in ids]
        what = f"module {type(params).__name__}"
    elif params == "all":
        chosen, what = list(trainable), "all"
    elif params == "last":
        prefix = _last_module_with_params(model)
        chosen = [n for n in trainable if n.rsplit(".", 1)[0] == prefix or (prefix == "" and "." not in n)]
        what = f"last module {prefix!r}"
    elif isinstance(params, str):
        return select_params(model, [params])
    else:
        patterns = list(params)
        chosen = [n for n in trainable if any(n == p or re.fullmatch(p, n) or n.startswith(p + ".")
                                              for p in patterns)]
        what = f"patterns {patterns}"
    if not chosen:
        raise InputError(
            f"parameter selection {what} matched no trainable parameter; "
            f"available: {', '.join(list(trainable)[:12])}{' …' if len(trainable) > 12 else ''}")
    return ParamSpace(tuple(chosen), tuple(trainable[n].shape for n in chosen))


def param_tensors(model: nn.Module, space: ParamSpace) -> dict[str, Tensor]:
    """The selected parameters as detached tensors (no copies)."""
    table = dict(model.named_parameters())
    return {n: table[n].detach() for n in space.names}


def check_finite_params(model: nn.Module, space: ParamSpace) -> None:
    """Refuse NaN/Inf weights before any work starts."""
    for name, t in param_tensors(model, space).items():
        if not all_finite(t):
            raise InputError(f"parameter {name!r} contains NaN or Inf; retrain or reload the model before attributing")
