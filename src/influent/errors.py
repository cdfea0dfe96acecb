"""One error family: every message says what was wrong and what to do about it."""
from __future__ import annotations


class InfluentError(Exception):
    """Base class of every error influent raises on purpose."""


class InputError(InfluentError, ValueError):
    """Bad input: data, shapes, options. Raised before any long computation."""


class NotFittedError(InfluentError, RuntimeError):
    """A method that needs `fit` was called first."""


class ConfigMismatchError(InfluentError):
    """Saved state (a store, an attributor) was made under another model or configuration."""


class UnsupportedLayerError(InfluentError):
    """A curvature approximation (K-FAC, EK-FAC) cannot handle a selected layer."""


class NumericalError(InfluentError, ArithmeticError):
    """NaN/Inf, an indefinite operator, or a solver that diverged."""


class DatasetNotAvailable(InfluentError, FileNotFoundError):
    """A data set is not installed; the message names the command that installs it."""
