"""Class removal by one Newton step: against retraining on a convex model, samplers, solvers, costs, errors."""
import math

import pytest
import torch
from torch import nn

from influent import Task
from influent.apps.class_removal import (DEFAULT_SCALES, f1_score, measure, objective_gradient, remove_class,
                                         removal_accuracy, split_class)
from influent.errors import InputError
from influent.grads import ModelFunction
from influent.inputs import as_examples
from influent.params import select_params
from influent.sampling import FeatureBased, LogitBased, Random
from influent.solvers import CG, Arnoldi, LiSSA
from influent.testing.problems import blobs
from influent.train import fit_lbfgs, objective

WD = 0.3
TASK = Task.classification()


def _logreg():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4)).double()


def _retrain(data):
    model = _logreg()
    fit_lbfgs(model, TASK, tuple(data), WD, tol=1e-12)
    return model


@pytest.fixture(scope="module")
def problem():
    """L2-regularised logistic regression (convex), 4 classes; train / validation / test from one draw."""
    X, y = blobs(460, 5, 4, seed=0, spread=1.5)
    train, test, val = (X[:300], y[:300]), (X[300:400], y[300:400]), (X[400:], y[400:])
    return _retrain(train), train, val, test


@pytest.fixture(scope="module")
def direct_step(problem):
    model, train, _, test = problem
    return remove_class(model, TASK, train, test, 1, weight_decay=WD, curvature="hessian", solver="direct").delta


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("label", [0, 3])
def test_newton_step_matches_retraining_on_a_convex_model(problem, label):
    model, train, _, test = problem
    r = remove_class(model, TASK, train, test, label, weight_decay=WD, curvature="hessian", solver="direct",
                     retrain=_retrain)
    new, ref, old = _flat(r.model), _flat(r.retrained_model), _flat(model)
    assert float((new - ref).norm()) < 0.35 * float((old - ref).norm())   # most of the way to the new optimum
    with torch.no_grad():
        agree = (r.model(test[0]).argmax(1) == r.retrained_model(test[0]).argmax(1)).double().mean()
    assert agree >= 0.98
    assert abs(r.newton.a_f - r.retrain.a_f) <= 0.02 and abs(r.newton.a_r - r.retrain.a_r) <= 0.02
    assert abs(r.newton.f1 - r.retrain.f1) <= 0.02
    assert r.newton.a_f < 0.5 * removal_accuracy(model, TASK, test, label)[0]   # the class is actually forgotten
    assert r.newton.seconds > 0 and r.retrain.seconds > 0 and r.newton.details["scale"] == 1.0


def test_newton_step_is_exact_newton_on_the_remaining_objective(problem):
    """θ' − θ̂ = −(∇²R_rem)⁻¹ ∇R_rem, checked against torch.autograd's dense Hessian of the objective."""
    model, train, _, test = problem
    r = remove_class(model, TASK, train, test, 2, weight_decay=WD, curvature="hessian", solver="direct")
    keep = train[1] != 2
    rem = (train[0][keep], train[1][keep])
    theta = _flat(model)

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def R(flat):
        parts = torch.split(flat, [math.prod(s) for s in shapes])
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes)}
        loss = TASK.train_loss(lambda x: torch.func.functional_call(model, params, (x,)), rem).mean()
        return loss + 0.5 * WD * (flat ** 2).sum()
    g = torch.autograd.functional.jacobian(R, theta)
    H = torch.autograd.functional.hessian(R, theta)
    torch.testing.assert_close(_flat(r.model), theta - torch.linalg.solve(H, g), rtol=1e-8, atol=1e-10)


SOLVERS = [("ggn", CG(rtol=1e-10)), pytest.param("ggn", LiSSA(rtol=1e-7), marks=pytest.mark.slow), ("hessian", Arnoldi(rank=20, iterations=20)),
           ("kfac", "direct"), ("ekfac", "direct")]


@pytest.mark.parametrize("curvature,solver", SOLVERS, ids=lambda p: p if isinstance(p, str) else type(p).__name__)
def test_every_curvature_and_solver_gives_the_step(problem, direct_step, curvature, solver):
    """Exact solvers reproduce the direct step; K-FAC/EK-FAC approximate it (a single layer: close)."""
    model, train, _, test = problem
    ref = direct_step
    d = remove_class(model, TASK, train, test, 1, weight_decay=WD, curvature=curvature, solver=solver,
                     sampler=Random(200)).delta
    full = remove_class(model, TASK, train, test, 1, weight_decay=WD, curvature=curvature, solver=solver).delta
    cos = float(full @ ref / (full.norm() * ref.norm()))
    if curvature in ("kfac", "ekfac"):
        assert cos > 0.95
    else:
        torch.testing.assert_close(full, ref, rtol=1e-4, atol=1e-5 * float(ref.norm()))
    assert 0.5 < float(d.norm() / full.norm()) < 2 and float((d - full).norm()) > 1e-9   # the sample was used


@pytest.mark.parametrize("sampler", [Random(225), FeatureBased(225), LogitBased(225, bins=3)],
                         ids=["random", "feature", "logit"])
def test_sampler_given_whole_remaining_set_reproduces_unsampled_step(problem, sampler):
    model, train, _, test = problem
    n_rem = int((train[1] != 0).sum())
    assert n_rem == 225
    a = remove_class(model, TASK, train, test, 0, weight_decay=WD, curvature="hessian", solver="direct")
    b = remove_class(model, TASK, train, test, 0, weight_decay=WD, curvature="hessian", solver="direct",
                     sampler=sampler, seed=4)
    torch.testing.assert_close(b.delta, a.delta, rtol=0, atol=0)
    assert b.newton.details["curvature_n"] == n_rem


def test_sampled_step_is_deterministic_and_uses_only_remaining_data(problem):
    model, train, _, test = problem
    kw = dict(weight_decay=WD, curvature="hessian", solver="direct", sampler=LogitBased(40), seed=7)
    a, b = (remove_class(model, TASK, train, test, 3, **kw) for _ in range(2))
    torch.testing.assert_close(a.delta, b.delta, rtol=0, atol=0)
    ids = a.newton.details["curvature_ids"]
    assert len(ids) == len(set(ids)) == 40
    assert all(int(train[1][i]) != 3 for i in ids)   # ids of the training set, none of the removed class


def test_validation_chooses_the_scale(problem):
    model, train, val, test = problem
    r = remove_class(model, TASK, train, test, 0, weight_decay=WD, curvature="hessian", solver="direct",
                     validation=val)
    curve = r.newton.details["validation_f1"]
    assert set(curve) == set(DEFAULT_SCALES)
    assert curve[r.newton.details["scale"]] == max(curve.values())


def test_gradient_is_the_objective_gradient(problem):
    model, train, _, _ = problem
    space = select_params(model)
    fn = ModelFunction(model, TASK, space)
    g = objective_gradient(fn, as_examples(train), WD, batch_size=64)
    ref = torch.autograd.grad(objective(model, TASK, train, WD), list(model.parameters()))
    torch.testing.assert_close(g, torch.cat([t.flatten() for t in ref]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("a_f,a_r,expected", [(0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (0.0, 0.5, 2 / 3),
                                              (0.5, 0.5, 0.5), (1.0, 0.0, 0.0)])
def test_f1(a_f, a_r, expected):
    assert math.isclose(f1_score(a_f, a_r), expected)


def test_measure_sees_a_large_allocation():
    with measure() as cost:
        x = torch.ones(40_000_000, dtype=torch.float32)  # 160 MB
        x += 1
    del x
    assert cost["peak_mb"] >= 100 and cost["seconds"] > 0


def test_stationarity_is_small_at_the_minimum_and_warns_away_from_it(problem):
    model, train, _, test = problem
    r = remove_class(model, TASK, train, test, 2, weight_decay=WD, curvature="hessian", solver="direct")
    assert r.newton.details["stationarity"] < 1e-4
    with pytest.warns(UserWarning, match="not at a minimum"):
        r = remove_class(_logreg().eval(), TASK, train, test, 2, weight_decay=WD, curvature="hessian", solver="direct")
    assert r.newton.details["stationarity"] > 0.1


@pytest.mark.parametrize("kwargs,message", [
    (dict(label=9), "does not occur"),
    (dict(label=1.0), "integer class"),
    (dict(sampler=Random(226)), "exceeds"),
    (dict(sampler=0), "positive integer"),
    (dict(scales=(1.0, 2.0)), "validation"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(damping=-1.0), "damping"),
    (dict(task=Task.regression()), "classification"),
])
def test_bad_input(problem, kwargs, message):
    model, train, _, test = problem
    kw = dict(label=0, weight_decay=WD, task=TASK)
    kw.update(kwargs)
    task, label = kw.pop("task"), kw.pop("label")
    with pytest.raises(InputError, match=message):
        remove_class(model, task, train, test, label, **kw)


def test_single_class_data_refused():
    X, _ = blobs(10, 5, 2)
    with pytest.raises(InputError, match="nothing would remain"):
        split_class(as_examples((X, torch.zeros(10, dtype=torch.long))), 0)
