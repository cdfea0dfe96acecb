"""One table of bad inputs across the library, the stores, the data loaders and `influent run` configs.

Each row is (id, builder, expected, pattern): `builder(tmp_path)` does the bad thing; `expected` is the
InfluentError subclass it must raise (or the Warning it must emit when the run can continue safely),
and `pattern` is a regex the message must match: the part that says what to do. The rows extend
tests/test_errors.py (which keeps its own 15 basic cases) with variants that take other code paths.
"""
from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import influent as inf
from influent import solvers
from influent.cli.config import ConfigError
from influent.curvature import DenseOperator
from influent.data import load_idx_set
from influent.errors import (ConfigMismatchError, DatasetNotAvailable, InputError, NotFittedError, NumericalError,
                             UnsupportedLayerError)
from influent.store import CorruptStoreError, GradientStore
from influent.testing.problems import blobs, regression_data, seeded

X, Y = blobs(12, 5, 3)
CLS = inf.Task.classification()


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp() -> nn.Module:
    return seeded(lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)))


def attr(model: nn.Module | None = None, **kw) -> inf.Attributor:
    """Identity curvature unless a row asks for another: most rows need no curvature and fits stay fast."""
    return inf.Attributor(mlp() if model is None else model, CLS, **{"damping": 0.1, "curvature": "identity", **kw})


def fit(data=(X, Y), model=None, **kw) -> inf.Attributor:
    return attr(model, **kw).fit(data)


_FITTED: dict = {}


def fitted() -> inf.Attributor:
    """One small fitted attributor shared by the scoring rows (fitting is the cheap part here)."""
    if "a" not in _FITTED:
        _FITTED["a"] = fit()
    return _FITTED["a"]


def poisoned(value: float, where=(0, 0)) -> nn.Module:
    m = mlp()
    with torch.no_grad():
        m[0].weight[where] = value
    return m


class AbsOut(nn.Module):
    """|z| as sqrt(z²): its derivative is 0/0 = NaN where z = 0, so example 9 (all zeros, no bias) has a
    NaN gradient mid-run although its inputs and loss are finite."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.lin(x).pow(2).sqrt()


def zero_feature_mid_run():
    Xz = X.clone()
    Xz[9] = 0.0
    return Xz


class Bilinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.bil = nn.Bilinear(5, 5, 3)

    def forward(self, x):
        return self.bil(x, x)


def dense_hessian(damping_free: bool = True) -> DenseOperator:
    """An indefinite 3×3 curvature (eigenvalues 2, 1, −1)."""
    return DenseOperator(torch.diag(torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64)))


def store_with_rows(tmp, fingerprint="model-a", config=None):
    s = GradientStore.open(tmp / "store", config=config or {"params": ["w"]}, fingerprint=fingerprint, dim=3,
                           dtype=torch.float64)
    s.append([0, 1], torch.ones(2, 3, dtype=torch.float64))
    s.append([2, 3], torch.ones(2, 3, dtype=torch.float64))
    s.mark_complete()
    return s


def corrupt(tmp, how: str):
    store_with_rows(tmp)
    shard = tmp / "store" / "shard-00001.safetensors"
    data = shard.read_bytes()
    if how == "flip":
        shard.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif how == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif how == "delete":
        shard.unlink()
    elif how == "manifest":
        (tmp / "store" / "manifest.json").write_text('{"format": 1, "ids": [0, 1')
        return GradientStore.open(tmp / "store")
    return GradientStore.open(tmp / "store").read_all()


def fit_into_store(tmp, model, params="all"):
    return attr(model, params=params).fit((X, Y), store=tmp / "grads")


def store_then_other(tmp, other_model=None, other_params="all"):
    fit_into_store(tmp, mlp())
    return fit_into_store(tmp, other_model or poisoned(0.5), other_params)


def saved_then_loaded(tmp):
    path = tmp / "attr.pt"
    fitted().save(path)
    return inf.Attributor.load(path, poisoned(0.5), CLS)


# ----- `influent run` configurations, through the command-line entry point -------------------
ENTRY = '''
import torch
from influent import Task, DatasetNotAvailable
from influent.testing.problems import blobs, seeded

def problem(n: int = 12):
    X, y = blobs(n, 5, 3)
    model = seeded(lambda: torch.nn.Sequential(torch.nn.Linear(5, 3)))
    return {"model": model, "task": Task.classification(), "train": (X, y), "query": (X[:2], y[:2])}

def not_a_dict():
    return [1, 2]

def no_query():
    X, y = blobs(12, 5, 3)
    return {"model": None, "task": None, "train": (X, y)}

def no_data():
    raise DatasetNotAvailable("mnist not found; run \\"make data\\"")
'''


def run_cli(tmp, config: str | None, name: str = "run.toml"):
    """`influent run CONFIG --debug`: the error the command would report, re-raised as itself."""
    from typer.testing import CliRunner

    from influent.cli import app

    (tmp / "toy.py").write_text(ENTRY)
    path = tmp / name
    if config is not None:
        path.write_text(textwrap.dedent(config))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp / "out"), "--quiet", "--debug"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def cfg(attributor: str = "", top: str = "", entry: str = "toy.py:problem", args: str = "") -> str:
    return f'entry = "{entry}"\n{top}\n[args]\n{args}\n[attributor]\n{attributor}\n'


def missing_dataset(tmp, monkeypatch_env):
    monkeypatch_env("INFLUENT_DATA", str(tmp))
    return inf.data.load_mnist("train")


W = UserWarning
# (id, builder(tmp, setenv), expected error or warning, regex the message must match: what to do)
ROWS = [
    # --- data ---------------------------------------------------------------------------------
    ("empty-dataloader", lambda t, e: fit(DataLoader(TensorDataset(X[:0], Y[:0]), batch_size=4)), InputError,
     "empty; pass at least one example"),
    ("empty-dataset", lambda t, e: fit(TensorDataset(X[:0], Y[:0])), InputError, "pass at least one example"),
    ("empty-query", lambda t, e: fitted().score((X[:0], Y[:0])), InputError, "query is empty"),
    ("query-label-count", lambda t, e: fitted().score((X[:4], Y[:3])), InputError, "same length"),
    ("ids-wrong-length", lambda t, e: attr().fit((X, Y), ids=list(range(5))), InputError, "one id per example"),
    ("query-wrong-width", lambda t, e: fitted().score((X[:, :4], Y)), InputError, "check the input shape"),
    ("query-labels-out-of-range", lambda t, e: fitted().score((X, Y - 1)), InputError, r"must lie in \[0, 2\]"),
    ("integer-inputs", lambda t, e: fit((X.long(), Y)), InputError, "dtype"),
    ("inf-inputs", lambda t, e: fit((X.masked_fill(X > 1, float("inf")), Y)), InputError, "clean or impute"),
    ("nan-query", lambda t, e: fitted().score((X.masked_fill(X > 1, float("nan")), Y)), InputError,
     "clean or impute"),
    ("scalar-tensor", lambda t, e: fit((torch.tensor(1.0), Y)), InputError, "example axis first"),
    ("list-of-non-tensors", lambda t, e: fit(([1, 2], [0, 1])), InputError, r"tensors \(X, y\)"),
    ("dict-without-input-key", lambda t, e: fit({"pixels": X, "y": Y}), InputError, r"Task\(forward="),
    ("regression-target-shape", lambda t, e: inf.Attributor(
        seeded(lambda: nn.Linear(4, 1)), inf.Task.regression()).fit((regression_data()[0], torch.ones(30, 2,
                                                                                                     dtype=torch.float64))),
     InputError, "check the input shape"),
    ("classifier-3d-output", lambda t, e: fit(model=seeded(lambda: nn.Sequential(nn.Linear(5, 3), nn.Unflatten(1, (3, 1))))),
     InputError, r"Task.regression\(\)"),
    # --- model and options ------------------------------------------------------------------
    ("inf-weight", lambda t, e: fit(model=poisoned(float("inf"))), InputError, "retrain or reload"),
    ("all-frozen", lambda t, e: fit(model=mlp().requires_grad_(False)), InputError, "unfreeze"),
    ("task-not-a-task", lambda t, e: inf.Attributor(mlp(), "classification").fit((X, Y)), InputError,
     r"Task.classification\(\)"),
    ("nan-damping", lambda t, e: fit(damping=float("nan")), InputError, "weight decay"),
    ("string-damping", lambda t, e: fit(damping="1e-3"), InputError, "damping must be a number"),
    ("memory-budget-not-a-size", lambda t, e: fit(memory="lots"), InputError, "write e.g. memory='8GB'"),
    ("memory-budget-too-small", lambda t, e: fit(memory="1KB"), InputError,
     "exceeds the memory budget.*(compress|top_k|store)"),
    ("negative-batch-size", lambda t, e: fit(batch_size=-8), InputError, "positive integer"),
    ("param-regex-matches-nothing", lambda t, e: fit(params=[r"decoder\..*"]), InputError, "available: 0.weight"),
    ("device-unavailable", lambda t, e: fit(device="cuda:7" if not torch.cuda.is_available() else "cuda:999"),
     InputError, "device"),
    ("dtype-not-floating", lambda t, e: fit(dtype=torch.int64), InputError, "dtype"),
    ("top-k-zero", lambda t, e: fitted().top_k((X, Y), 0), InputError, "positive integer"),
    ("top-k-negative", lambda t, e: fitted().score((X, Y)).top_k(-2), InputError, "positive integer"),
    ("compress-k-above-P", lambda t, e: fit(compress=inf.compress.Gaussian(k=1000)), InputError,
     r"k must lie in \[1, 39\]"),
    ("compress-k-zero", lambda t, e: fit(compress={"name": "gaussian", "k": 0}), InputError, r"\[1, 39\]"),
    ("unknown-compressor", lambda t, e: fit(compress={"name": "jl", "k": 4}), InputError, "choose one of"),
    ("sampler-budget-zero", lambda t, e: fit(sampler=0), InputError, "positive integer"),
    ("unknown-sampler", lambda t, e: fit(sampler="kmeans"), InputError, "LogitBased"),
    ("score-before-fit", lambda t, e: attr().top_k((X, Y), 3), NotFittedError, r"call attr.fit\(train\)"),
    ("train-mode-batchnorm", lambda t, e: fit(model=seeded(lambda: nn.Sequential(
        nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))).train()), W, r"Call model.eval\(\)"),
    ("kfac-unsupported-layer", lambda t, e: fit(model=seeded(Bilinear), curvature="kfac"), UnsupportedLayerError,
     "restrict params="),
    ("ekfac-unsupported-layer", lambda t, e: fit(model=seeded(Bilinear), curvature="ekfac"), UnsupportedLayerError,
     "use curvature='ggn'"),
    ("ggn-custom-task", lambda t, e: inf.Attributor(mlp(), inf.Task.from_callables(
        lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")), curvature="ggn").fit((X, Y)),
     InputError, "Task.classification"),
    ("nan-gradient-mid-run", lambda t, e: fit((zero_feature_mid_run(), Y), model=seeded(AbsOut), solver="cg"),
     NumericalError, "check the inputs and the loss"),
    ("nan-curvature-direct", lambda t, e: fit((zero_feature_mid_run(), Y), model=seeded(AbsOut), curvature="ggn"),
     NumericalError, "check the inputs, the loss"),
    ("nan-curvature-kfac", lambda t, e: fit((zero_feature_mid_run(), Y), model=seeded(AbsOut), curvature="kfac"),
     NumericalError, "check the inputs, the loss"),
    ("dense-curvature-too-big", lambda t, e: fit((torch.randn(4, 200, dtype=torch.float64), Y[:4]),
                                                 model=seeded(lambda: nn.Linear(200, 130)), curvature="ggn"),
     InputError, "solver='cg'"),
    # --- solvers -----------------------------------------------------------------------------
    ("direct-indefinite-singular", lambda t, e: solvers.Direct().fit(dense_hessian(), 1.0), NumericalError,
     "raise the damping to at least"),
    ("direct-indefinite-warns", lambda t, e: solvers.Direct().fit(dense_hessian(), 0.5), W,
     "damping >= 1 would make it positive definite"),
    ("cg-indefinite", lambda t, e: solvers.CG().fit(dense_hessian(), 0.5).solve(torch.ones(3, 1,
                                                                                            dtype=torch.float64)),
     NumericalError, "Raise the damping above"),
    ("cg-not-converged", lambda t, e: solvers.CG(max_iter=1).fit(DenseOperator(torch.diag(torch.arange(
        1.0, 6.0, dtype=torch.float64))), 0.0).solve(torch.ones(5, 1, dtype=torch.float64)), W, "Raise max_iter"),
    ("lissa-diverges", lambda t, e: solvers.LiSSA(scale=0.1, depth=200).fit(dense_hessian(), 1.5).solve(
        torch.ones(3, 1, dtype=torch.float64)), NumericalError, "set scale"),
    ("lissa-not-converged", lambda t, e: solvers.LiSSA(depth=3).fit(dense_hessian(), 1.5).solve(
        torch.ones(3, 1, dtype=torch.float64)), W, "Raise depth"),
    ("arnoldi-zero-rank", lambda t, e: solvers.Arnoldi(rank=0), InputError, "positive integers"),
    ("arnoldi-extension-no-damping", lambda t, e: solvers.Arnoldi(extension=True).fit(dense_hessian(), 0.0),
     InputError, "needs damping > 0"),
    ("solve-before-fit", lambda t, e: solvers.CG().solve(torch.ones(3, 1)), NotFittedError, r"fit\(curvature"),
    ("solve-wrong-shape", lambda t, e: solvers.Direct().fit(DenseOperator(torch.eye(3, dtype=torch.float64)),
                                                            0.1).solve(torch.ones(4, 1, dtype=torch.float64)),
     InputError, r"must be \[3, m\]"),
    ("solve-nan-rhs", lambda t, e: solvers.CG().fit(DenseOperator(torch.eye(3, dtype=torch.float64)), 0.1).solve(
        torch.full((3, 1), float("nan"), dtype=torch.float64)), InputError, "check the gradients"),
    # --- stores and saved state --------------------------------------------------------------
    ("store-other-model", lambda t, e: store_then_other(t), ConfigMismatchError, "use a new directory or delete it"),
    ("store-other-params", lambda t, e: store_then_other(t, mlp(), ["2.weight", "2.bias"]), ConfigMismatchError,
     "use a new directory"),
    ("store-other-data", lambda t, e: (fit_into_store(t, mlp()), attr().fit(
        (X.flip(0), Y.flip(0)), ids=list(range(100, 112)), store=t / "grads")), ConfigMismatchError,
     "other examples"),
    ("shard-bit-flip", lambda t, e: corrupt(t, "flip"), CorruptStoreError, "recompute"),
    ("shard-truncated", lambda t, e: corrupt(t, "truncate"), CorruptStoreError, "corrupted or truncated"),
    ("shard-missing", lambda t, e: corrupt(t, "delete"), CorruptStoreError, "delete the store and recompute"),
    ("manifest-truncated", lambda t, e: corrupt(t, "manifest"), CorruptStoreError, "delete the store"),
    ("store-not-there", lambda t, e: GradientStore.open(t / "nothing"), InputError, "pass config, fingerprint"),
    ("load-other-model", lambda t, e: saved_then_loaded(t), ConfigMismatchError, "different weights"),
    # --- data loaders ------------------------------------------------------------------------
    ("dataset-missing", lambda t, e: missing_dataset(t, e), DatasetNotAvailable, 'run "make data"'),
    ("dataset-unknown", lambda t, e: load_idx_set("cifar10"), InputError, "choose one of"),
    ("dataset-bad-split", lambda t, e: inf.data.load_fashion_mnist("validation"), InputError, "'train' or 'test'"),
    # --- `influent run` configurations ---------------------------------------------------------
    ("config-unknown-top-key", lambda t, e: run_cli(t, cfg(top="titel = 'x'")), ConfigError, "did you mean 'title'"),
    ("config-unknown-attributor-key", lambda t, e: run_cli(t, cfg("dampin = 0.1")), ConfigError,
     "did you mean 'damping'"),
    ("config-unknown-solver-option", lambda t, e: run_cli(t, cfg('solver = { name = "cg", rtl = 1e-6 }')),
     ConfigError, "did you mean 'rtol'"),
    ("config-unknown-solver", lambda t, e: run_cli(t, cfg('solver = "arnold"')), InputError, "choose one of"),
    ("config-bad-dtype", lambda t, e: run_cli(t, cfg('dtype = "float46"')), ConfigError, "float64"),
    ("config-negative-damping", lambda t, e: run_cli(t, cfg("damping = -0.1")), InputError, "damping must be"),
    ("config-not-toml", lambda t, e: run_cli(t, "entry = \n"), ConfigError, "not valid TOML"),
    ("config-file-missing", lambda t, e: run_cli(t, None, "absent.toml"), ConfigError, "pass the path of a TOML"),
    ("config-no-entry", lambda t, e: run_cli(t, "title = 'x'\n"), ConfigError, 'add e.g. entry = "my_module'),
    ("config-entry-malformed", lambda t, e: run_cli(t, cfg(entry="toy.problem")), ConfigError, "module:function"),
    ("config-entry-module-missing", lambda t, e: run_cli(t, cfg(entry="no_such_module_xyz:problem")), ConfigError,
     "check the name"),
    ("config-entry-function-missing", lambda t, e: run_cli(t, cfg(entry="toy.py:problme")), ConfigError,
     "did you mean 'problem'"),
    ("config-unknown-arg", lambda t, e: run_cli(t, cfg(args="nn = 3")), ConfigError, "did you mean 'n'"),
    ("config-entry-returns-list", lambda t, e: run_cli(t, cfg(entry="toy.py:not_a_dict")), ConfigError,
     "return a dict"),
    ("config-entry-misses-query", lambda t, e: run_cli(t, cfg(entry="toy.py:no_query")), ConfigError,
     "the dict needs model, task, train, query"),
    ("config-dataset-missing", lambda t, e: run_cli(t, cfg(entry="toy.py:no_data")), DatasetNotAvailable,
     "make data"),
    ("config-attributor-not-table", lambda t, e: run_cli(t, 'entry = "toy.py:problem"\nattributor = 3\n'),
     ConfigError, "must be a table"),
]


def test_table_is_large_and_distinct():
    ids = [r[0] for r in ROWS]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(row, tmp_path, monkeypatch):
    _, build, expected, pattern = row
    if issubclass(expected, Warning):
        with pytest.warns(expected, match=pattern):
            out = build(tmp_path, monkeypatch.setenv)
        if isinstance(out, inf.Attributor):  # the run continued: its scores must be finite
            assert torch.isfinite(out.score((X, Y)).values).all()
        return
    with pytest.raises(expected, match=pattern) as info:
        build(tmp_path, monkeypatch.setenv)
    assert isinstance(info.value, inf.InfluentError)
    assert not isinstance(info.value, KeyError) and str(info.value).strip()
