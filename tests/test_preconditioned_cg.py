"""Preconditioned CG: K-FAC / EK-FAC (or any fitted solver) as M ≈ H + λI gives the direct answer in fewer steps."""
import pytest
import torch
from torch import nn

import influent as inf
from influent.compress import Dropout
from influent.curvature import DenseOperator
from influent.errors import InputError
from influent.solvers import CG, Direct
from influent.testing.problems import blobs, seeded

pytestmark = pytest.mark.usefixtures("one_thread")
X, Y = blobs(60, 6, 3, seed=3)
XQ, YQ = blobs(4, 6, 3, seed=4)


def _mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _fit(solver, curvature="ggn", **kw):
    return inf.Attributor(seeded(_mlp), inf.Task.classification(), curvature=curvature, solver=solver,
                          damping=1e-3, **kw).fit((X, Y))


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("preconditioner", ["kfac", "ekfac"])
def test_kfac_preconditioned_cg_equals_the_direct_solve(preconditioner, block):
    # fewer iterations is measured on the digits MLP (benchmarks/vs_libraries.py); on this 83-parameter
    # net K-FAC, blind to the cross-layer blocks, is no better a preconditioner than the identity
    direct = _fit("direct").score((XQ, YQ)).values
    plain, pre = _fit(CG(rtol=1e-10, block=block)), _fit(CG(rtol=1e-10, preconditioner=preconditioner, block=block))
    torch.testing.assert_close(pre.score((XQ, YQ)).values, direct, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(plain.score((XQ, YQ)).values, direct, rtol=1e-6, atol=1e-8)
    assert pre.solver_.info_["converged"] and plain.solver_.info_["converged"]
    assert pre.solver_.preconditioner_ is not None and plain.solver_.preconditioner_ is None


@pytest.mark.parametrize("block", [False, True])
def test_an_exact_preconditioner_converges_in_one_step(block):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(30, 30, generator=g, dtype=torch.float64)
    H = DenseOperator(A @ A.T / 30)
    B = torch.randn(30, 5, generator=g, dtype=torch.float64)
    cg = CG(rtol=1e-10, preconditioner=Direct().fit(H, 0.1), block=block).fit(H, 0.1)
    torch.testing.assert_close(cg.solve(B), Direct().fit(H, 0.1).solve(B))
    assert cg.info_["iterations"] == 1


def test_a_preconditioned_cg_survives_save_and_load(tmp_path):
    attr = _fit(CG(rtol=1e-10, preconditioner="kfac"))
    attr.save(tmp_path / "a.pt")
    back = inf.Attributor.load(tmp_path / "a.pt", attr.model, inf.Task.classification())
    assert back.solver_.preconditioner_ is not None
    torch.testing.assert_close(back.score((XQ, YQ)).values, attr.score((XQ, YQ)).values)


BAD = [  # (what, call)
    ("unknown name", lambda: CG(preconditioner="jacobi")),
    ("not a solver", lambda: CG(preconditioner=3)),
    ("by name without the model", lambda: CG(preconditioner="kfac").fit(DenseOperator(torch.eye(3)), 0.1)
     .solve(torch.ones(3, 1))),
    ("with compression", lambda: _fit(CG(preconditioner="kfac"), curvature="empirical_fisher",
                                      compress=Dropout(10, seed=0))),
]


@pytest.mark.parametrize("what,call", BAD, ids=[b[0] for b in BAD])
def test_bad_preconditioners_are_refused(what, call):
    with pytest.raises(InputError):
        call()
