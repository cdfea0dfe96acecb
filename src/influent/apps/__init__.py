"""Applications built on the public layers: the papers' experiments as functions a user calls."""
from . import memorization, pruning  # noqa: F401  (memorization.analyze, pruning.prune)
