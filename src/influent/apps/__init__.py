"""Applications built on the public layers: the papers' experiments as functions a user calls."""
from . import memorization, pruning  # noqa: F401  (memorization.analyze, pruning.prune)
from . import class_removal  # noqa: F401,E402  (class_removal.remove_class)
