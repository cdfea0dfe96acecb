"""influent: which training examples made my PyTorch model do this?"""
from __future__ import annotations

__version__ = "0.1.0"

from . import compress, curvature, eval, solvers
from .errors import (ConfigMismatchError, DatasetNotAvailable, InfluentError, InputError, NotFittedError,
                     NumericalError, UnsupportedLayerError)
from .params import ParamSpace, select_params
from .scores import Scores
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
    "compress", "curvature", "solvers", "sampling", "eval",
]

from .attributor import Attributor  # noqa: E402  (needs __version__ above)
from . import sampling  # noqa: E402
