"""Scoring from Linear-layer factors equals scoring from flat per-example gradients."""
import pytest
import torch
from torch import nn

import influent as inf
from influent.factors import plan_factors
from influent.testing.problems import blobs, seeded


def _mlp():
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))


class SeqModel(nn.Module):
    """A Linear applied to a sequence: not one row per example, so the dense path must be used."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(5, 3)

    def forward(self, x):
        return self.proj(x[:, None, :].expand(-1, 2, -1)).mean(1)


X, Y = blobs(30, 5, 3, seed=7)
XQ, YQ = blobs(6, 5, 3, seed=8)

CONFIGS = [
    dict(curvature="identity", solver="identity"),
    dict(curvature="hessian", solver="direct"),
    dict(curvature="ggn", solver="cg"),
    dict(curvature="kfac", solver="direct"),
    dict(curvature="ekfac", solver="direct"),
    dict(curvature="hessian", solver="arnoldi"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['curvature']}-{c['solver']}")
@pytest.mark.parametrize("params", ["all", ["2"], ["0.weight", "2.bias"]])
def test_factored_scores_equal_dense(config, params):
    model = seeded(_mlp)
    dense = inf.Attributor(model, inf.Task.classification(), params=params, damping=0.1, **config).fit((X, Y))
    fact = inf.Attributor(model, inf.Task.classification(), params=params, damping=0.1, batch_size=7,
                          cache_bytes=0, **config).fit((X, Y))
    assert dense.train_grads_ is not None and fact._factored()
    torch.testing.assert_close(fact.score((XQ, YQ)).values, dense.score((XQ, YQ)).values, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(fact.self_influence(), dense.self_influence(), rtol=1e-7, atol=1e-10)
    v, i = fact.top_k((XQ, YQ), 4)
    dv, di = dense.score((XQ, YQ)).top_k(4)
    torch.testing.assert_close(v, dv, rtol=1e-7, atol=1e-10)


def test_plan_refuses_non_linear_parameters():
    model = seeded(lambda: nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3)))
    assert plan_factors(model, inf.select_params(model)) is None
    assert plan_factors(model, inf.select_params(model, ["2"])) is not None


def test_sequence_inputs_fall_back_to_dense_gradients():
    model = seeded(SeqModel)
    ref = inf.Attributor(model, inf.Task.classification(), damping=0.1).fit((X, Y)).score((XQ, YQ)).values
    attr = inf.Attributor(model, inf.Task.classification(), damping=0.1, cache_bytes=0).fit((X, Y))
    torch.testing.assert_close(attr.score((XQ, YQ)).values, ref, rtol=1e-8, atol=1e-10)
    assert attr.factor_layers_ is None  # detected and switched off


def test_cached_training_rows_from_factors_equal_per_example_autograd(monkeypatch):
    """Rows kept in memory come from Linear factors (one backward pass, no vmap); they equal vmap autograd."""
    from influent.grads import ModelFunction

    X, y = blobs(40, 5, 3, seed=1)
    X = X.double()
    model = seeded(lambda: nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))).double()
    vmap_rows = ModelFunction.per_example_grads
    for params in ("all", "last"):
        with monkeypatch.context() as m:
            m.setattr(ModelFunction, "per_example_grads", lambda *a, **k: pytest.fail("autograd path used"))
            attr = inf.Attributor(model, inf.Task.classification(), params=params, curvature="identity",
                                  solver="identity").fit((X, y))
        assert attr.train_grads_ is not None
        torch.testing.assert_close(attr.train_grads_, vmap_rows(attr.fn_, (X, y)), rtol=1e-12, atol=1e-14)
