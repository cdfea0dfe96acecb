"""Numerical safety: float32 models factor in float64, every solver reports its residual, a damping sweep
never gives NaN/Inf, and ill-conditioned or indefinite curvatures are reported with the damping that fixes them."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import influent as inf
from influent import solvers
from influent.curvature import DenseOperator
from influent.testing.problems import blobs, seeded
from influent.train import fit_lbfgs

X, Y = blobs(30, 5, 3, seed=7)


pytestmark = pytest.mark.usefixtures("one_thread")


def trained(dtype=torch.float64) -> nn.Module:
    model = seeded(lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)), dtype=torch.float64)
    fit_lbfgs(model, inf.Task.classification(), (X, Y), weight_decay=1e-2, max_iter=50)
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def models():
    m64 = trained()
    m32 = trained()
    return m64, m32.float()


def test_float32_model_factors_in_float64_and_matches_float64(models):
    m64, m32 = models
    kw = {"curvature": "ggn", "damping": 1e-2}
    a32 = inf.Attributor(m32, inf.Task.classification(), **kw).fit((X.float(), Y))
    a64 = inf.Attributor(m64, inf.Task.classification(), **kw).fit((X, Y))
    assert a32.solver_._chol.dtype == torch.float64           # the factorisation, whatever the model dtype
    s32, s64 = a32.score((X[:5].float(), Y[:5])).values, a64.score((X[:5], Y[:5])).values
    assert s32.dtype == torch.float32
    assert float((s32.double() - s64).abs().max() / s64.abs().max()) < 1e-4


def test_kfac_eigenbases_are_float64_for_a_float32_model(models):
    a = inf.Attributor(models[1], inf.Task.classification(), curvature="ekfac", damping=1e-2).fit((X.float(), Y))
    a.score((X[:2].float(), Y[:2]))
    assert all(l.QA.dtype == torch.float64 and l.QS.dtype == torch.float64 for l in a.curvature_.layers)


# every solver records how well it solved; (name, solver, info key, bound)
REPORTS = [
    ("direct", lambda: solvers.Direct(), "residual", 1e-10),
    ("direct-kfac", lambda: solvers.Direct(), "residual", 1e-10),
    ("cg", lambda: solvers.CG(rtol=1e-10), "residual", 1e-10),
    ("lissa", lambda: solvers.LiSSA(rtol=1e-6), "residual", 1e-6),
    ("arnoldi", lambda: solvers.Arnoldi(rank=39, iterations=39), "residual", 1e-6),
]


@pytest.mark.parametrize("name,make,key,bound", REPORTS, ids=[r[0] for r in REPORTS])
def test_every_solver_reports_its_residual(models, name, make, key, bound):
    curvature = "kfac" if name.endswith("kfac") else "ggn"
    attr = inf.Attributor(models[0], inf.Task.classification(), curvature=curvature, solver=make(),
                          damping=1.0).fit((X, Y))
    if name in ("cg", "lissa"):
        attr.score((X[:3], Y[:3]))                  # iterative solvers report on their solves
        assert attr.solver_.info_["converged"] is True
    assert 0 <= attr.solver_.info_[key] <= bound


@pytest.fixture(scope="module")
def ggn(models):
    """The dense GGN of the trained model (39 × 39), its gradients and query gradients."""
    a = inf.Attributor(models[0], inf.Task.classification(), curvature="ggn", damping=1.0).fit((X, Y))
    G = torch.cat([g for _, g in a._train_blocks()])
    return DenseOperator(a.curvature_.dense(dtype=torch.float64)), G


SWEEP = [10.0 ** e for e in range(-8, 3)]
SOLVERS = [("direct", solvers.Direct), ("cg", lambda: solvers.CG(rtol=1e-10, max_iter=100)),
           ("lissa", lambda: solvers.LiSSA(depth=300)), ("arnoldi", lambda: solvers.Arnoldi(rank=39, iterations=39)),
           ("arnoldi-extension", lambda: solvers.Arnoldi(rank=5, iterations=10, extension=True))]


@pytest.mark.parametrize("name,make", SOLVERS, ids=[s[0] for s in SOLVERS])
def test_damping_sweep_never_gives_nan_or_inf(ggn, name, make):
    H, G = ggn
    for damping in SWEEP:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # slow convergence at λ = 1e-8 is reported, not fatal
            solver = make().fit(H, damping)
            S = G[:4] @ solver.solve(G.T)
        assert torch.isfinite(S).all(), f"{name} at damping {damping:g}"


def test_ill_conditioned_curvature_is_reported_with_the_damping_that_fixes_it():
    H = DenseOperator(torch.diag(torch.tensor([1.0, 1e-3, 1e-15], dtype=torch.float64)))
    with pytest.warns(UserWarning, match="ill-conditioned.*damping >="):
        solver = solvers.Direct().fit(H, 0.0)
    fix = solver.info_["suggested_damping"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")               # the suggested damping is quiet
        fixed = solvers.Direct().fit(H, fix)
    assert fixed.info_["condition_estimate"] <= 1.01e10


def test_indefinite_curvature_is_reported_with_the_damping_that_fixes_it():
    H = DenseOperator(torch.diag(torch.tensor([2.0, 0.5, -0.3], dtype=torch.float64)))
    with pytest.warns(UserWarning, match="not positive definite"):
        fix = solvers.Direct().fit(H, 0.1).info_["suggested_damping"]
    assert 0.3 < fix < 0.31
    with pytest.raises(inf.NumericalError, match=r"Raise the damping above"):
        solvers.CG().fit(H, 0.1).solve(torch.ones(3, 1, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert solvers.Direct().fit(H, fix).info_["method"] == "cholesky"


@pytest.mark.parametrize("values,dtype,expected", [
    ([1.0, -2.0, 3.5], torch.float32, True),
    ([1.0, float("nan"), 3.0], torch.float32, False),
    ([1.0, float("inf"), 3.0], torch.float64, False),
    ([float("inf"), float("-inf")], torch.float32, False),          # the sum is NaN, not ±Inf
    ([3e38, 3e38, 3e38], torch.float32, True),                       # finite values whose sum overflows
    ([6e4, 6e4, 6e4], torch.float16, True),
    ([1.0, float("nan")], torch.bfloat16, False),
    ([], torch.float32, True),
])
def test_all_finite(values, dtype, expected):
    from influent.finite import all_finite

    t = torch.tensor(values, dtype=dtype)
    assert all_finite(t) is expected
    assert all_finite(t.reshape(-1, 1).expand(-1, 3)) is expected
    assert all_finite(torch.arange(3)) is True
