"""What the report shows for one example: an image (array in [0, 1]) or a text, from a `show` function.

A `show(split, position)` function maps ("train" | "query", position in that set) to an image
array ([H, W] or [H, W, 3]), a string, or None. `image_show` / `text_show` build the common ones.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from ..errors import InputError

View = Union[np.ndarray, str, None]
Show = Callable[[str, int], View]
SPLITS = ("train", "query")


def first_input(batch: Any) -> Any:
    """The model input of a batch: the first element of a tuple/list, or a dict's 'input'/'x'."""
    if isinstance(batch, dict):
        for key in ("input", "inputs", "x", "input_ids"):
            if key in batch:
                return batch[key]
        return next(iter(batch.values()))
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def labels_of(batch: Any) -> list | None:
    """Per-example labels of a batch (a tuple's second tensor, or a dict's 'y'/'label'/'target'), or None."""
    y = None
    if isinstance(batch, dict):
        y = next((batch[k] for k in ("y", "label", "labels", "target", "targets") if k in batch), None)
    elif isinstance(batch, (tuple, list)) and len(batch) > 1:
        y = batch[1]
    if not isinstance(y, torch.Tensor) or y.dim() == 0:
        return None
    if y.dim() == 1 and not y.is_floating_point():
        return [int(v) for v in y.tolist()]
    if y.dim() == 1 or (y.dim() == 2 and y.shape[1] == 1):
        return [float(v) for v in y.reshape(-1).tolist()]
    return None


def as_image(x: Any, shape: Sequence[int] | None = None) -> np.ndarray | None:
    """An example's input as an image in [0, 1] ([H, W] or [H, W, 3]), or None when it does not look like one.

    [C, H, W] with C in (1, 3), [H, W], and a flat vector whose length is a square (8×8 digits) all qualify.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    a = x.detach().cpu().double()
    if shape is not None:
        a = a.reshape(*shape)
    elif a.dim() == 1:
        side = math.isqrt(a.numel())
        if side < 4 or side * side != a.numel():
            return None
        a = a.reshape(side, side)
    if a.dim() == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else a.permute(1, 2, 0)
    if a.dim() not in (2, 3) or (a.dim() == 3 and a.shape[2] != 3):
        return None
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:  # normalised inputs: stretch to [0, 1] for display
        a = (a - lo) / (hi - lo) if hi > lo else a * 0
    return a.float().numpy()


def image_show(train_inputs: torch.Tensor, query_inputs: torch.Tensor, shape: Sequence[int] | None = None) -> Show:
    """Show examples as images, e.g. `image_show(Xtr, Xq, shape=(28, 28))`."""
    inputs = {"train": train_inputs, "query": query_inputs}
    return lambda split, i: as_image(inputs[split][i], shape)


def text_show(train_texts: Sequence[str], query_texts: Sequence[str]) -> Show:
    """Show examples as their texts (e.g. the raw review behind a bag-of-words input)."""
    texts = {"train": train_texts, "query": query_texts}
    return lambda split, i: str(texts[split][i])


def default_show(train_batch: Any, query_batch: Any) -> Show:
    """Images where the inputs look like images, otherwise nothing (ids, labels and scores only)."""
    inputs = {"train": first_input(train_batch), "query": first_input(query_batch)}
    return lambda split, i: as_image(inputs[split][i]) if isinstance(inputs[split], torch.Tensor) else None


def check_view(view: Any, where: str) -> View:
    """Validate what a user's `show` returned: an image array, a string or None."""
    if view is None or isinstance(view, str):
        return view
    if isinstance(view, torch.Tensor):
        view = view.detach().cpu().numpy()
    if isinstance(view, np.ndarray) and (view.ndim == 2 or (view.ndim == 3 and view.shape[2] in (3, 4))):
        return np.clip(view.astype(np.float32), 0, 1)
    raise InputError(f"show({where}) returned {type(view).__name__}; return an image array [H, W] or [H, W, 3] "
                     "with values in [0, 1], a string, or None")
