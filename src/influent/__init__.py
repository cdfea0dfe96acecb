"""influent: which training examples made my PyTorch model do this?"""
from __future__ import annotations

__version__ = "0.1.0"

from . import curvature, solvers
from .errors import (ConfigMismatchError, DatasetNotAvailable, InfluentError, InputError, NotFittedError,
                     NumericalError, UnsupportedLayerError)
from .params import ParamSpace, select_params
from .task import Task

__all__ = [
    # tasks and selection
    "Task", "ParamSpace", "select_params",
    # estimator and results
    "Attributor", "Scores",
    # errors
    "InfluentError", "InputError", "NotFittedError", "ConfigMismatchError", "UnsupportedLayerError",
    "NumericalError", "DatasetNotAvailable",
    # stages
    "curvature", "solvers",
]


def __getattr__(name: str):
    if name in ("Attributor", "Scores"):
        from . import scoring
        return getattr(scoring, name)
    raise AttributeError(name)
