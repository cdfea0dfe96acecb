"""Classification measurements (loss, margin, log_prob, prob): brute-force oracles and the sign convention.

DESIGN.md §1: for a measurement f where larger is better, score_f = −∇f_qᵀ (H + λI)⁻¹ g_i, so a
positive score still means "removing i hurts the query". Hence score_prob = p_y · score_loss, the
oriented form of "prob-influence = −p_y × loss-influence" (raw derivatives: ∇p_y = −p_y ∇ℓ).
"""
import pytest
import torch
from torch import nn
from torch.func import functional_call

import influent as inf
from influent.params import select_params
from influent.testing.problems import blobs, seeded
from influent.testing.reference import dense_hessian
from influent.train import fit_lbfgs

WD = 1e-2


def _margin(z, y):
    others = z.clone()
    others[torch.arange(len(y)), y] = float("-inf")
    return z[torch.arange(len(y)), y] - others.max(1).values


# measurement name -> f(logits, y), larger is better (written here from scratch, not taken from task.py)
MEASURES = {
    "loss": lambda z, y: -nn.functional.cross_entropy(z, y, reduction="none"),
    "log_prob": lambda z, y: torch.log_softmax(z, -1)[torch.arange(len(y)), y],
    "prob": lambda z, y: torch.softmax(z, -1)[torch.arange(len(y)), y],
    "margin": _margin,
}


@pytest.fixture(scope="module")
def problem():
    X, y = blobs(36, 4, 3, seed=5, spread=1.2)
    Xq, yq = blobs(6, 4, 3, seed=6, spread=1.2)
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)))
    fit_lbfgs(model, inf.Task.classification(), (X, y), weight_decay=WD, max_iter=500)
    return model, (X, y), (Xq, yq)


def _grads(model, f, X, y):
    """Per-example ∇_θ f(model(x), y), one autograd call each: [B, P]."""
    names = [n for n, _ in model.named_parameters()]
    rows = []
    for i in range(len(y)):
        params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
        out = f(functional_call(model, params, (X[i: i + 1],)), y[i: i + 1])[0]
        g = torch.autograd.grad(out, [params[n] for n in names])
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def preconditioned_train(problem):
    """(H + λI)⁻¹ ∇ℓ_i for every training point, [P, n], from the dense Hessian."""
    model, (X, y), _ = problem
    H = dense_hessian(model, inf.Task.classification(), select_params(model), (X, y))
    A = H + WD * torch.eye(H.shape[0], dtype=H.dtype)
    return torch.linalg.solve(A, -_grads(model, MEASURES["loss"], X, y).T)


@pytest.mark.parametrize("measurement", list(MEASURES))
def test_measurement_scores_equal_oriented_oracle(problem, preconditioned_train, measurement):
    model, (X, y), (Xq, yq) = problem
    oracle = -_grads(model, MEASURES[measurement], Xq, yq) @ preconditioned_train
    got = inf.Attributor(model, inf.Task.classification(measurement), damping=WD).fit((X, y)).score((Xq, yq)).values
    torch.testing.assert_close(got, oracle, rtol=1e-7, atol=1e-10)


def test_raw_prob_gradient_is_minus_p_times_loss_gradient(problem):
    model, _, (Xq, yq) = problem
    with torch.no_grad():
        p_y = torch.softmax(model(Xq), -1).gather(1, yq[:, None])
    raw_prob = _grads(model, MEASURES["prob"], Xq, yq)
    raw_loss = -_grads(model, MEASURES["loss"], Xq, yq)
    torch.testing.assert_close(raw_prob, -p_y * raw_loss, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("params", ["all", "last"])
def test_prob_score_is_p_times_loss_score_and_log_prob_equals_loss(problem, params):
    model, train, (Xq, yq) = problem
    s = {m: inf.Attributor(model, inf.Task.classification(m), params=params, damping=WD).fit(train)
         .score((Xq, yq)).values for m in ("loss", "log_prob", "prob")}
    with torch.no_grad():
        p_y = torch.softmax(model(Xq), -1).gather(1, yq[:, None])
    torch.testing.assert_close(s["prob"], p_y * s["loss"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(s["log_prob"], s["loss"], rtol=1e-12, atol=1e-14)
    assert not torch.allclose(s["prob"], s["loss"])  # p_y < 1: the relation is not trivial


def test_positive_prob_score_means_removal_lowers_the_probability():
    """Sign convention against retraining on a convex model: Δp_y(remove i) ≈ −score_prob / n."""
    X, y = blobs(30, 3, 3, seed=7, spread=1.5)
    Xq, yq = blobs(4, 3, 3, seed=8, spread=1.5)
    model = seeded(lambda: nn.Linear(3, 3))
    task = inf.Task.classification()
    fit_lbfgs(model, task, (X, y), weight_decay=WD, tol=1e-12)
    scores = inf.Attributor(model, inf.Task.classification("prob"), damping=WD).fit((X, y)).score((Xq, yq)).values
    with torch.no_grad():
        p0 = torch.softmax(model(Xq), -1).gather(1, yq[:, None]).squeeze(1)
    pred, actual = [], []
    for i in range(6):
        keep = torch.arange(30) != i
        m = seeded(lambda: nn.Linear(3, 3))
        m.load_state_dict(model.state_dict())
        fit_lbfgs(m, task, (X[keep], y[keep]), weight_decay=WD, tol=1e-10)
        with torch.no_grad():
            actual.append(torch.softmax(m(Xq), -1).gather(1, yq[:, None]).squeeze(1) - p0)
        pred.append(-scores[:, i] / 30)
    pred, actual = torch.cat(pred), torch.cat(actual)
    assert inf.eval.pearson(pred, actual) > 0.95  # a flipped sign convention would give ≈ −0.95


def test_unknown_measurement_is_refused():
    with pytest.raises(inf.InputError, match="unknown measurement"):
        inf.Task.classification("accuracy")
