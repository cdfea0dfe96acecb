"""Turn what users pass (tensors, a Dataset, a DataLoader) into batches with stable ids."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .errors import InputError
from .finite import all_finite
from .task import Batch, batch_size_of, index_batch


@dataclass
class Examples:
    """An in-memory set of examples: one batch-shaped structure plus an id per example."""

    data: Batch
    ids: list

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, batch_size: int) -> Iterator[tuple[list, Batch]]:
        n = len(self)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield self.ids[start:stop], index_batch(self.data, slice(start, stop))

    def subset(self, positions: Sequence[int]) -> "Examples":
        idx = torch.as_tensor(list(positions), dtype=torch.long)
        return Examples(index_batch(self.data, idx), [self.ids[i] for i in idx.tolist()])

    def to(self, device: torch.device | str | None, dtype: torch.dtype | None) -> "Examples":
        check_device_dtype(device, dtype)

        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            return t.to(device) if device is not None else t
        data = {k: move(v) for k, v in self.data.items()} if isinstance(self.data, dict) \
            else tuple(move(t) for t in self.data)
        return Examples(data, self.ids)


def check_device_dtype(device: Any, dtype: Any) -> None:
    """Refuse a device that does not exist here or a non-floating dtype, before any data is moved."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"dtype must be a floating torch dtype such as torch.float64, got {dtype!r}; "
                         "or pass dtype=None to follow the model")
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device {device!r} is not a valid torch device ({e}); use e.g. 'cpu' or 'cuda:0'") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"device {device!r} is not available on this machine ({torch.cuda.device_count()} CUDA "
                         "devices); use device='cpu' or pass device=None to follow the model")


def _stack(items: list) -> Batch:
    first = items[0]
    if isinstance(first, dict):
        return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(torch.stack([torch.as_tensor(it[j]) for it in items]) for j in range(len(first)))
    return (torch.stack([torch.as_tensor(it) for it in items]),)


def _cat(batches: list) -> Batch:
    first = batches[0]
    if isinstance(first, dict):
        return {k: torch.cat([b[k] for b in batches]) for k in first}
    return tuple(torch.cat([b[j] for b in batches]) for j in range(len(first)))


def as_examples(data: Any, ids: Sequence | None = None, name: str = "data") -> Examples:
    """Accept (X, y) tensors, a dict of tensors, a Dataset or a DataLoader; check and gather them.

    Raises InputError on empty data, tensors whose lengths disagree, or ids of the wrong length.
    """
    if isinstance(data, Examples):
        return data
    if isinstance(data, DataLoader):
        batches = [tuple(b) if isinstance(b, list) else b for b in data]
        if not batches:
            raise InputError(f"{name} is empty; pass at least one example")
        batch = _cat(batches)
    elif isinstance(data, Dataset):
        if len(data) == 0:  # type: ignore[arg-type]
            raise InputError(f"{name} is empty; pass at least one example")
        batch = _stack([data[i] for i in range(len(data))])  # type: ignore[arg-type]
    elif isinstance(data, Tensor):
        batch = (data,)
    elif isinstance(data, dict) or isinstance(data, (tuple, list)):
        batch = data if isinstance(data, dict) else tuple(data)
        values = list(batch.values()) if isinstance(batch, dict) else list(batch)
        if not values or not all(isinstance(v, Tensor) for v in values):
            raise InputError(f"{name} must be tensors (X, y), a dict of tensors, a Dataset or a DataLoader")
    else:
        raise InputError(f"{name} has unsupported type {type(data).__name__}; "
                         "pass (X, y) tensors, a dict of tensors, a Dataset or a DataLoader")
    values = list(batch.values()) if isinstance(batch, dict) else list(batch)
    lengths = {int(v.shape[0]) if v.dim() else -1 for v in values}
    if len(lengths) != 1 or -1 in lengths:
        raise InputError(f"{name}: tensors have different numbers of examples {sorted(lengths)}; "
                         "every tensor needs the example axis first and the same length")
    n = batch_size_of(batch)
    if n == 0:
        raise InputError(f"{name} is empty; pass at least one example")
    for v in values:
        if not all_finite(v):
            raise InputError(f"{name} contains NaN or Inf values; clean or impute them first")
    if ids is None:
        ids = list(range(n))
    else:
        ids = list(ids)
        if len(ids) != n:
            raise InputError(f"{name}: {len(ids)} ids for {n} examples; pass one id per example")
    return Examples(batch, ids)
