"""Adapters that run other influence libraries under influent's conventions, one module per library.

Every adapter returns a float64 tensor [n_query, n_train] meaning the same as influent's score:
score[q, i] = g_q^T (H + λI)^{-1} g_i, H the curvature of the MEAN training loss (weight decay
enters as λ = wd), positive = helpful, units such that the predicted leave-one-out change of the
query loss is +score/n. Each module fixes its library's own conventions (sum vs mean loss,
damping added to a summed curvature, sign, per-batch inversion, [train, query] layout) and
imports the library lazily, so this package loads in any environment.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

LIBRARIES = ("influent", "kronfluence", "pydvl", "captum", "trak", "dattri")
IMPORT_NAMES = {"influent": "influent", "kronfluence": "kronfluence", "pydvl": "pydvl", "captum": "captum",
                "trak": "trak", "dattri": "dattri"}
PIP_NAMES = {"kronfluence": "kronfluence", "pydvl": "pydvl[influence]", "captum": "captum", "trak": "traker",
             "dattri": "dattri"}


@dataclass
class Problem:
    """One benchmark task: a trained model, its data and the conventions every adapter must follow."""

    name: str
    model: nn.Module                  # trained, eval mode
    train: tuple[Tensor, Tensor]
    query: tuple[Tensor, Tensor]
    weight_decay: float               # the model was trained on mean CE + (wd/2)‖θ‖²: λ = wd
    workdir: Path                     # scratch space for libraries that write to disk
    batch_size: int = 256
    options: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.train[1])

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def dataset(self, which: str = "train") -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(*(self.train if which == "train" else self.query))

    def loader(self, which: str = "train", batch_size: int | None = None) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.dataset(which), batch_size=batch_size or self.batch_size,
                                           shuffle=False)


Method = Callable[[Problem], Tensor]


def missing(library: str) -> str | None:
    """None if `library` imports, else a one-line reason with the install command."""
    try:
        importlib.import_module(IMPORT_NAMES[library])
    except Exception as e:  # ImportError, or a broken install that fails on import
        return (f"{library} not importable ({type(e).__name__}: {str(e)[:120]}); install it with "
                f"`pip install -r benchmarks/requirements-libs.txt` in a separate venv (see that file)")
    return None


def adapter(library: str):
    """The adapter module of `library` (its own import is deferred to the method call)."""
    return importlib.import_module(f"libs.{'influent_methods' if library == 'influent' else library}")


def as_scores(values, n_query: int, n_train: int, *, transpose: bool = False, sign: float = 1.0,
              scale: float = 1.0) -> Tensor:
    """Bring a library's score array into influent's [n_query, n_train] float64 layout and units."""
    v = torch.as_tensor(values).detach().cpu().double()
    if transpose:
        v = v.T
    if tuple(v.shape) != (n_query, n_train):
        raise ValueError(f"adapter produced shape {tuple(v.shape)}, expected {(n_query, n_train)}")
    return (sign * scale) * v.contiguous()


def float32_copy(p: Problem) -> Problem:
    """The same problem on a float32 copy of the model and data (for methods that fail on float64)."""
    import copy
    import dataclasses

    f = (lambda t: t.float() if t.is_floating_point() else t)
    return dataclasses.replace(p, model=copy.deepcopy(p.model).float(), train=tuple(map(f, p.train)),
                               query=tuple(map(f, p.query)))
