"""Gradient compressors: seeded linear maps [B, P] → [B, k] shared by train, query and curvature.

Dropout (element and neuron level), Gaussian, Rademacher, SJLT, FactoredGaussian (from Linear
factors) and PCA; `Chain` composes them and `make_compressor` builds one from a spec.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

from ..errors import InputError
from .base import Chain, Compressor
from .dropout import Dropout
from .pca import PCA
from .projections import SJLT, FactoredGaussian, Gaussian, Rademacher

__all__ = ["Compressor", "Chain", "Dropout", "Gaussian", "Rademacher", "SJLT", "FactoredGaussian", "PCA",
           "make_compressor", "COMPRESSORS"]

COMPRESSORS: dict[str, type[Compressor]] = {
    c.name: c for c in (Dropout, Gaussian, Rademacher, SJLT, FactoredGaussian, PCA)}


def make_compressor(spec: Compressor | Mapping[str, Any] | Sequence | None) -> Compressor | None:
    """A compressor from None, an object, a dict {"name": ..., "k": ..., options} or a list (a Chain).

    Accepts what `config()` returns (the informational "scale" is ignored).

    Example:
        >>> make_compressor({"name": "dropout", "k": 4096, "level": "neuron"})
        Dropout(k=4096, seed=0, level='neuron')
    """
    if spec is None or isinstance(spec, Compressor):
        return spec
    if isinstance(spec, (list, tuple)):
        return Chain(*[make_compressor(s) for s in spec])
    if isinstance(spec, str):
        raise InputError(f"compressor {spec!r} needs a size: pass a dict such as {{'name': {spec!r}, 'k': 1024}} "
                         f"or an object such as influent.compress.Dropout(k=1024)")
    if not isinstance(spec, Mapping):
        raise InputError(f"compress must be None, a Compressor, a dict or a list, got {type(spec).__name__}")
    options = {k: v for k, v in spec.items() if k not in ("name", "scale")}
    name = spec.get("name")
    if name == "chain":
        return Chain(*[make_compressor(p) for p in options.get("parts", [])])
    if name not in COMPRESSORS:
        raise InputError(f"unknown compressor {name!r}; choose one of {sorted(COMPRESSORS) + ['chain']}")
    cls = COMPRESSORS[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(allowed))
    if unknown or "k" not in options:
        raise InputError(f"compressor {name!r} takes options {allowed} (k required); got {sorted(options)}")
    return cls(**options)
