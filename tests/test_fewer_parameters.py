"""Influence on a subset S of the parameters, and when it is exact (docs/fewer_parameters.md).

Subset influence uses g_Sᵀ (H_SS + λI)⁻¹ g_S. Full influence of gradients that vanish outside S
(g_R = 0) is g_Sᵀ [(H + λI)⁻¹]_SS g_S = g_Sᵀ (Schur complement)⁻¹ g_S, with
Schur = (H_SS + λI) − H_SR (H_RR + λI)⁻¹ H_RS; the two agree when H_SR = 0.
"""
import pytest
import torch
from torch import nn

import influent as inf
from influent.params import select_params
from influent.testing.problems import blobs, seeded
from influent.testing.reference import dense_ggn, per_example_grads_loop
from influent.train import fit_lbfgs

WD = 1e-2


@pytest.fixture(scope="module")
def problem():
    X_all, y_all = blobs(35, 3, 3, seed=41, spread=1.0)
    X, y, Xq, yq = X_all[:30], y_all[:30], X_all[30:], y_all[30:]
    model = seeded(lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)))
    fit_lbfgs(model, inf.Task.classification(), (X, y), weight_decay=WD, max_iter=500)
    return model, (X, y), (Xq, yq)


def _dense(model, train, query):
    task = inf.Task.classification()
    space = select_params(model)
    H = dense_ggn(model, task, space, train) + WD * torch.eye(space.numel, dtype=torch.float64)
    Gt = per_example_grads_loop(model, task, space, train)
    Gq = per_example_grads_loop(model, task, space, query, query=True)
    S = torch.arange(space.numel - 15, space.numel)  # the last Linear(4, 3): 12 weights + 3 biases
    R = torch.arange(space.numel - 15)
    return H, Gt, Gq, S, R


@pytest.mark.parametrize("params", ["last", ["2"], ["2.weight", "2.bias"]])
def test_subset_influence_uses_the_subset_block(problem, params):
    model, train, query = problem
    H, Gt, Gq, S, _ = _dense(model, train, query)
    expected = Gq[:, S] @ torch.linalg.solve(H[S][:, S], Gt[:, S].T)
    got = inf.Attributor(model, inf.Task.classification(), params=params, curvature="ggn", damping=WD) \
        .fit(train).score(query).values
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-11)


def test_schur_complement_gives_full_influence_of_subset_gradients(problem):
    model, train, query = problem
    H, Gt, Gq, S, R = _dense(model, train, query)
    schur = H[S][:, S] - H[S][:, R] @ torch.linalg.solve(H[R][:, R], H[R][:, S])
    full_restricted = torch.linalg.inv(H)[S][:, S]
    torch.testing.assert_close(torch.linalg.inv(schur), full_restricted, rtol=1e-8, atol=1e-10)
    # subset block alone differs from it when H_SR ≠ 0 ...
    subset = Gq[:, S] @ torch.linalg.solve(H[S][:, S], Gt[:, S].T)
    via_schur = Gq[:, S] @ torch.linalg.solve(schur, Gt[:, S].T)
    assert (subset - via_schur).abs().max() > 1e-3 * via_schur.abs().max()
    # ... and equals it once the cross-curvature vanishes (block-diagonal H)
    Hb = H.clone()
    Hb[S[:, None], R[None, :]] = 0
    Hb[R[:, None], S[None, :]] = 0
    g_q, g_t = torch.zeros_like(Gq), torch.zeros_like(Gt)
    g_q[:, S], g_t[:, S] = Gq[:, S], Gt[:, S]
    torch.testing.assert_close(g_q @ torch.linalg.solve(Hb, g_t.T), subset, rtol=1e-9, atol=1e-12)


def test_unknown_layer_name_is_refused(problem):
    model, train, _ = problem
    with pytest.raises(inf.InputError, match="matched no trainable parameter.*available: 0.weight"):
        inf.Attributor(model, inf.Task.classification(), params=["head"]).fit(train)
