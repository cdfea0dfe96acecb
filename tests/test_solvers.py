"""Iterative solvers (CG, LiSSA, Arnoldi) against the direct float64 solve, plus their failure modes."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from influent.curvature import GGN, DenseOperator
from influent.errors import InputError, NumericalError
from influent.grads import ModelFunction
from influent.inputs import as_examples
from influent.params import select_params
from influent.solvers import CG, Arnoldi, Direct, LiSSA, make_solver
from influent.task import Task

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls are latency-bound; one thread keeps the many-step LiSSA loops fast on a busy CI box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spectral(eigvals: torch.Tensor, seed: int = 0) -> DenseOperator:
    """Q diag(eigvals) Qᵀ with a seeded random orthogonal Q."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(eigvals), len(eigvals), generator=g, dtype=F64))
    H = (Q * eigvals) @ Q.T
    return DenseOperator((H + H.T) / 2)


def rhs(P: int, m: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(P, m, generator=torch.Generator().manual_seed(seed), dtype=F64)


def rel_err(X: torch.Tensor, ref: torch.Tensor) -> float:
    return float((X - ref).norm() / ref.norm())


LOGSPEC = 10 ** torch.linspace(-2, 2, 100, dtype=F64)   # PAPERS A1: condition number 1e4


# ----- convergence to the direct solve ---------------------------------------------------------------
CONVERGE = [  # (solver factory, damping, tolerance)
    pytest.param(lambda: CG(rtol=1e-10, block=False), 1e-1, 1e-6, id="cg-0.1"),
    pytest.param(lambda: CG(rtol=1e-10, block=False), 1.0, 1e-6, id="cg-1"),
    pytest.param(lambda: CG(rtol=1e-10), 1e-1, 1e-6, id="block-cg-0.1"),
    pytest.param(lambda: CG(rtol=1e-10), 1.0, 1e-6, id="block-cg-1"),
    pytest.param(lambda: LiSSA(rtol=1e-8), 1e-1, 1e-6, id="lissa-0.1"),
    pytest.param(lambda: LiSSA(rtol=1e-8), 1.0, 1e-6, id="lissa-1"),
]


@pytest.mark.parametrize("make, damping, tol", CONVERGE)
def test_iterative_matches_direct(make, damping, tol):
    op, B = spectral(LOGSPEC), rhs(100, 4)
    B[:, 2] = 0                                   # a zero right-hand side solves to zero
    ref = Direct().fit(op, damping).solve(B)
    solver = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # converged: no warning
        X = solver.fit(op, damping).solve(B)
    assert rel_err(X, ref) < tol
    assert torch.all(X[:, 2] == 0)
    assert solver.info_["converged"] and solver.info_["residual"] <= solver.rtol
    assert solver.info_["iterations"] > 0


def test_lissa_scale_and_depth_come_from_the_spectrum():
    op = spectral(LOGSPEC)
    s = LiSSA(rtol=1e-6).fit(op, 1.0)
    assert s.info_["lambda_max"] == pytest.approx(100.0, rel=1e-2)
    assert s.scale_ == pytest.approx(1.1 * (s.info_["lambda_max"] + 1.0))
    assert s.depth_ == pytest.approx(s.scale_ / 1.0 * 13.8155, rel=1e-3)   # (s/λ) ln(1/rtol)
    assert LiSSA(depth=7, scale=3.0).fit(op, 1.0).depth_ == 7


def test_damping_folded_into_the_operator_is_peeled_off():
    op, B = spectral(LOGSPEC), rhs(100, 2)
    ref = Direct().fit(op, 1.0).solve(B)
    for solver in (CG(rtol=1e-10), LiSSA(rtol=1e-8), Arnoldi(rank=100, iterations=100, extension=True)):
        assert rel_err(solver.fit(op + 0.5, 0.5).solve(B), ref) < 1e-6


# ----- Arnoldi identities (PAPERS §1, A1) ------------------------------------------------------------
def test_arnoldi_full_rank_equals_direct():
    op, B = spectral(LOGSPEC), rhs(100, 3)
    ref = Direct().fit(op, 0.0).solve(B)
    a = Arnoldi(rank=100, iterations=100, negatives="signed").fit(op, 0.0)
    assert rel_err(a.solve(B), ref) < 1e-8
    assert a.rank_ == 100 and a.info_["iterations"] == 100


def test_arnoldi_top_eigenvalues():
    a = Arnoldi(rank=10, iterations=50).fit(spectral(LOGSPEC), 0.0)
    true = LOGSPEC.flip(0)[:10]
    assert torch.allclose(a.eigenvalues_, true, rtol=1e-10, atol=0)
    assert a.info_["eigenvalues"] == pytest.approx(true.tolist(), rel=1e-10)
    U = a.eigenvectors_
    assert U.shape == (100, 10) and U.dtype == F64
    assert torch.allclose(U.T @ U, torch.eye(10, dtype=F64), atol=1e-10)


def test_arnoldi_caps_iterations_at_the_size():
    a = Arnoldi(rank=5, iterations=500).fit(spectral(LOGSPEC[:20]), 0.0)
    assert a.info_["iterations"] <= 20


INDEFINITE = torch.cat([-torch.linspace(0.5, 3.0, 6, dtype=F64), torch.linspace(1.0, 10.0, 14, dtype=F64)])
NEGATIVES = [  # (policy, damping, eigenvalues that must be kept)
    ("drop", 0.0, INDEFINITE[INDEFINITE > 0]),
    ("signed", 0.0, INDEFINITE),
    ("shift", 1.0, INDEFINITE[INDEFINITE + 1.0 > 0]),
]


@pytest.mark.parametrize("policy, damping, kept", NEGATIVES)
def test_arnoldi_negatives_policy(policy, damping, kept):
    op = spectral(INDEFINITE, seed=3)
    a = Arnoldi(rank=20, iterations=20, negatives=policy).fit(op, damping)
    assert torch.allclose(a.eigenvalues_.sort().values, kept.sort().values, atol=1e-10)
    if policy == "drop":
        assert bool((a.eigenvalues_ > 0).all())
    if policy == "signed":                        # the full indefinite inverse
        B = rhs(20, 2)
        with pytest.warns(UserWarning, match="not positive definite"):
            ref = Direct().fit(op, 0.0).solve(B)
        assert rel_err(a.solve(B), ref) < 1e-10


def test_arnoldi_is_deterministic_under_its_seed():
    op, B = spectral(LOGSPEC), rhs(100, 2)
    x0 = Arnoldi(rank=5, iterations=10, seed=0).fit(op, 0.1).solve(B)
    assert torch.equal(x0, Arnoldi(rank=5, iterations=10, seed=0).fit(op, 0.1).solve(B))
    x1 = Arnoldi(rank=5, iterations=10, seed=1).fit(op, 0.1).solve(B)
    assert not torch.equal(x0, x1)


def test_arnoldi_state_dict_round_trip_without_refit():
    op, B = spectral(LOGSPEC), rhs(100, 2)
    a = Arnoldi(rank=20, iterations=40, extension=True).fit(op, 0.1)
    state = a.state_dict()
    b = Arnoldi(rank=20, iterations=40, extension=True)
    b.load_state_dict(state, DenseOperator(torch.full((100, 100), float("nan"), dtype=F64)), 0.1)  # never used
    assert torch.equal(a.solve(B), b.solve(B)) and b.rank_ == a.rank_


def test_arnoldi_extension_adds_the_complement():
    op, B = spectral(LOGSPEC), rhs(100, 2)
    lam = 0.5
    plain = Arnoldi(rank=10, iterations=30).fit(op, lam)
    ext = Arnoldi(rank=10, iterations=30, extension=True).fit(op, lam)
    U = plain.eigenvectors_
    assert torch.allclose(ext.solve(B) - plain.solve(B), (B - U @ (U.T @ B)) / lam, atol=1e-12)
    with pytest.raises(InputError, match="damping > 0"):
        Arnoldi(extension=True).fit(op, 0.0)


# ----- failure modes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [False, True])
def test_cg_raises_on_an_indefinite_operator(block):
    op = spectral(torch.linspace(-2.0, 1.0, 30, dtype=F64))
    with pytest.raises(NumericalError, match="not positive definite.*damping"):
        CG(block=block).fit(op, 0.1).solve(rhs(30, 3))


@pytest.mark.parametrize("block", [False, True])
def test_cg_warns_when_it_runs_out_of_iterations(block):
    s = CG(rtol=1e-12, max_iter=3, block=block)
    with pytest.warns(UserWarning, match=r"max_iter.*\(2 of 2 columns\)|2 of 2 columns.*max_iter"):
        s.fit(spectral(LOGSPEC), 0.1).solve(rhs(100, 2))
    assert s.info_["iterations"] == 3 and not s.info_["converged"]


def test_block_cg_shares_its_krylov_space_across_related_columns():
    """Columns that mix a few directions converge together in far fewer iterations than one CG each,
    and a block wider than the problem stops once it spans everything (no breakdown)."""
    op = spectral(LOGSPEC)
    B = rhs(100, 3) @ rhs(3, 12, seed=5) + 1e-3 * rhs(100, 12, seed=6)   # 12 columns, nearly rank 3
    ref = Direct().fit(op, 1e-2).solve(B)
    plain, block = CG(rtol=1e-10, block=False), CG(rtol=1e-10)
    assert rel_err(plain.fit(op, 1e-2).solve(B), ref) < 1e-7 and rel_err(block.fit(op, 1e-2).solve(B), ref) < 1e-7
    assert block.info_["iterations"] < plain.info_["iterations"] / 2
    wide = CG(rtol=1e-12, block=True).fit(op, 1e-2)
    assert rel_err(wide.solve(rhs(100, 150, seed=7)), Direct().fit(op, 1e-2).solve(rhs(100, 150, seed=7))) < 1e-9
    assert wide.info_["block"] <= 100 and wide.info_["iterations"] <= 3


def test_lissa_raises_when_the_scale_is_too_small():
    with pytest.raises(NumericalError, match=r"scale ≥ 1\.1·λ_max ≈ 1\d\d"):
        LiSSA(scale=10.0, depth=2000).fit(spectral(LOGSPEC), 1.0).solve(rhs(100, 2))


def test_lissa_raises_on_negative_curvature():
    with pytest.raises(NumericalError, match="negative eigenvalues"):
        LiSSA(depth=5000).fit(spectral(torch.linspace(-2.0, 1.0, 30, dtype=F64)), 0.1).solve(rhs(30, 1))


def test_lissa_minibatch_hook_and_fallback():
    class Minibatched(DenseOperator):
        calls = 0

        def minibatch(self, batch_size, generator):
            Minibatched.calls += 1
            return self
    ev = torch.linspace(1.0, 4.0, 10, dtype=F64)
    op, B = spectral(ev), rhs(10, 2)
    ref = Direct().fit(op, 1.0).solve(B)
    sto = LiSSA(batch_size=4, depth=300).fit(Minibatched(op.matrix), 1.0)
    assert rel_err(sto.solve(B), ref) < 1e-8 and Minibatched.calls == 300 and sto.info_["stochastic"]
    with pytest.warns(UserWarning, match="batch_size=4 ignored"):
        full = LiSSA(batch_size=4).fit(op, 1.0)
    assert rel_err(full.solve(B), ref) < 1e-5


def test_bad_options_and_inputs():
    with pytest.raises(InputError):
        Arnoldi(negatives="abs")
    with pytest.raises(InputError):
        LiSSA(scale=-1.0)
    with pytest.raises(InputError, match="NaN"):
        CG().fit(spectral(LOGSPEC), 1.0).solve(torch.full((100, 1), float("nan"), dtype=F64))


def test_config_and_factory():
    assert CG(rtol=1e-4).config() == {"name": "cg", "rtol": 1e-4, "max_iter": None, "progress": False,
                                      "preconditioner": None, "block": True}
    assert LiSSA(depth=10).config()["depth"] == 10
    assert Arnoldi(rank=7).config()["rank"] == 7
    assert isinstance(make_solver("cg"), CG)
    assert make_solver("lissa", seed=3).seed == 3 and make_solver("arnoldi", seed=4).seed == 4


def test_float32_stays_float32():
    op = DenseOperator(spectral(LOGSPEC[50:]).matrix.float())
    B = rhs(50, 2).float()
    ref = Direct().fit(op, 1.0).solve(B)
    for solver in (CG(rtol=1e-5), CG(rtol=1e-5, block=False), LiSSA(rtol=1e-5), Arnoldi(rank=50, iterations=50, negatives="signed")):
        X = solver.fit(op, 1.0).solve(B)
        assert X.dtype == torch.float32 and rel_err(X, ref) < 1e-4


# ----- a real curvature: GGN of a tiny MLP (singular: CE is blind to a shift of all logits) ------------
@pytest.fixture(scope="module")
def ggn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(32, 5, generator=g, dtype=F64), torch.randint(0, 3, (32,), generator=g)
    op = GGN(ModelFunction(model, Task.classification(), select_params(model)), as_examples((X, y)))
    B = rhs(op.size, 3, seed=2)
    return op, B, Direct().fit(op, 1e-2).solve(B)


REAL = [  # (solver factory, tolerance)
    pytest.param(lambda P: CG(rtol=1e-10, block=False), 1e-8, id="cg"),
    pytest.param(lambda P: CG(rtol=1e-10), 1e-8, id="block-cg"),
    pytest.param(lambda P: LiSSA(rtol=1e-6), 1e-5, id="lissa"),
    pytest.param(lambda P: Arnoldi(rank=P, iterations=P, negatives="signed", tol=0.0), 1e-10, id="arnoldi-full"),
    # Early stop at the invariant Krylov subspace; its complement is the null space, weighted exactly 1/λ.
    pytest.param(lambda P: Arnoldi(rank=P, iterations=P, tol=1e-12, extension=True), 1e-10, id="arnoldi-ext"),
]


@pytest.mark.parametrize("make, tol", REAL)
def test_solvers_on_a_real_ggn(ggn, make, tol):
    op, B, ref = ggn
    assert rel_err(make(op.size).fit(op, 1e-2).solve(B), ref) < tol


def test_stochastic_lissa_on_a_real_curvature_is_seeded_and_close():
    """LiSSA(batch_size=...) draws a fresh seeded mini-batch Hessian per step (curvature.minibatch)."""
    import torch
    from torch import nn

    from influent.curvature import GGN
    from influent.grads import ModelFunction
    from influent.inputs import as_examples
    from influent.params import select_params
    from influent.solvers import Direct, LiSSA
    from influent.task import Task
    from influent.testing.problems import blobs, seeded

    model = seeded(lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)))
    op = GGN(ModelFunction(model, Task.classification(), select_params(model)), as_examples(blobs(60, 5, 3)))
    B = torch.randn(op.size, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = Direct().fit(op, 0.5).solve(B)
    a, b = (LiSSA(batch_size=30, depth=400, seed=1).fit(op, 0.5).solve(B) for _ in range(2))
    c = LiSSA(batch_size=30, depth=400, seed=2).fit(op, 0.5).solve(B)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float((a - exact).norm() / exact.norm()) < 0.1
