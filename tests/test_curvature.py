"""Curvature operators of the mean loss against dense float64 references."""
import pytest
import torch
from torch import nn

from influent import Task
from influent.curvature import GGN, DenseOperator, EmpiricalFisher, Fisher, Hessian, split_damping
from influent.grads import ModelFunction
from influent.inputs import as_examples
from influent.params import select_params
from influent.testing.problems import blobs, regression_data, seeded
from influent.testing.reference import dense_ggn, dense_hessian, per_example_grads_loop

CASES = [
    dict(id="mlp-ce", model=lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)),
         task=Task.classification(), data=lambda: blobs(13, 5, 3)),
    dict(id="linear-mse", model=lambda: nn.Linear(4, 2), task=Task.regression(), data=lambda: regression_data(11, 4, 2)),
    dict(id="mlp-mse", model=lambda: nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2)),
         task=Task.regression(), data=lambda: regression_data(11, 4, 2)),
]


def _setup(case):
    model = seeded(case["model"])
    space = select_params(model)
    batch = case["data"]()
    return model, space, batch, ModelFunction(model, case["task"], space)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
@pytest.mark.parametrize("batch_size", [4, 64])
def test_hessian_matches_dense_reference(case, batch_size):
    model, space, batch, fn = _setup(case)
    H = Hessian(fn, as_examples(batch), batch_size).dense()
    torch.testing.assert_close(H, dense_hessian(model, case["task"], space, batch), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_ggn_matches_dense_reference(case):
    model, space, batch, fn = _setup(case)
    G = GGN(fn, as_examples(batch), 5).dense()
    torch.testing.assert_close(G, dense_ggn(model, case["task"], space, batch), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_empirical_fisher_is_mean_outer_product(case):
    model, space, batch, fn = _setup(case)
    G = per_example_grads_loop(model, case["task"], space, batch)
    F = EmpiricalFisher(fn, as_examples(batch), 4).dense()
    torch.testing.assert_close(F, G.T @ G / G.shape[0], rtol=1e-9, atol=1e-12)


def test_true_fisher_is_seeded_and_approaches_ggn():
    case = CASES[0]
    model, space, batch, fn = _setup(case)
    ex = as_examples(batch)
    F0, F0b, F1 = (Fisher(fn, ex, 8, seed=s).dense() for s in (0, 0, 1))
    assert torch.equal(F0, F0b) and not torch.allclose(F0, F1)
    # many label samples: the true Fisher's expectation is the GGN for cross-entropy
    Fm = Fisher(fn, ex, 64, seed=0, n_samples=400).dense()
    G = GGN(fn, ex, 64).dense()
    assert (Fm - G).norm() / G.norm() < 0.1


def test_operator_algebra_and_damping_split():
    A = torch.randn(6, 6, dtype=torch.float64)
    op = DenseOperator(A @ A.T)
    V = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close((op + 0.5) @ V, (A @ A.T + 0.5 * torch.eye(6, dtype=torch.float64)) @ V)
    torch.testing.assert_close((2 * op) @ V, 2 * (A @ A.T) @ V)
    base, lam = split_damping(op + 0.25 + 0.5)
    assert base is op and lam == 0.75


@pytest.mark.parametrize("kind", [EmpiricalFisher, Fisher])
def test_fast_dense_equals_matrix_free_products(kind):
    from influent.curvature.operator import LinearOperator

    model, space, batch, fn = _setup(CASES[0])
    op = kind(fn, as_examples(batch), 5)
    torch.testing.assert_close(op.dense(), LinearOperator.dense(op), rtol=1e-10, atol=1e-12)


def test_true_fisher_does_not_depend_on_the_batch_size():
    model, space, batch, fn = _setup(CASES[0])
    ex = as_examples(batch)
    torch.testing.assert_close(Fisher(fn, ex, 3, seed=5).dense(), Fisher(fn, ex, 64, seed=5).dense(),
                               rtol=1e-12, atol=1e-14)
