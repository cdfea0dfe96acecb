"""Ground-truth evaluation: exact retraining, leave-one-out, LDS and its ceiling, mislabel AUC."""
import copy
import warnings

import pytest
import torch
from torch import nn

import influent as inf
from influent.eval import (ConvergenceWarning, Retrainer, default_cache_dir, detection_auc, flip_labels, lds,
                           leave_one_out, noise_ceiling)
from influent.testing.problems import blobs, seeded
from influent.train import fit_adam, fit_lbfgs, objective

WD = 1e-2
TASK = inf.Task.classification()


@pytest.fixture(scope="module")
def logistic(tmp_path_factory):
    """L2-regularised logistic regression (convex), float64, trained to a strict optimum."""
    X, y = blobs(100, 4, 3, seed=3, spread=1.5)
    Xq, yq = blobs(6, 4, 3, seed=4, spread=1.5)
    model = seeded(lambda: nn.Linear(4, 3))
    fit_lbfgs(model, TASK, (X, y), weight_decay=WD, tol=1e-12, max_iter=300)
    scores = inf.Attributor(model, TASK, curvature="hessian", solver="direct", damping=WD).fit((X, y)).score((Xq, yq))
    return model, (X, y), (Xq, yq), scores, tmp_path_factory.mktemp("eval-cache")


def _grad_norm(model, data):
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.autograd.grad(objective(model, TASK, data, WD), params)
    return float(torch.sqrt(sum((x ** 2).sum() for x in g)))


def test_retrainer_converges_and_caches(logistic):
    model, (X, y), _, _, cache = logistic
    keep = torch.arange(1, 100)
    rt = Retrainer(model, TASK, (X, y), WD, cache_dir=cache / "rt")
    m1, g1 = rt.fit(keep)
    assert g1 < 1e-9 and _grad_norm(m1, (X[keep], y[keep])) < 1e-9
    again = Retrainer(model, TASK, (X, y), WD, cache_dir=cache / "rt")
    m2, g2 = again.fit(keep)
    assert again.hits_ == 1 and again.misses_ == 0 and g2 == g1
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    m3, _ = again.fit(torch.arange(0, 99))  # another subset: another key, another optimum
    assert again.misses_ == 1 and not torch.equal(m3.weight, m1.weight)
    # options are part of the key too
    assert Retrainer(model, TASK, (X, y), 2 * WD, cache_dir=cache / "rt").fit(keep).grad_norm < 1e-9
    assert len(list((cache / "rt").glob("*.pt"))) == 3 and not list((cache / "rt").glob(".tmp-*"))


@pytest.mark.parametrize("method,tol", [("newton_cg", 1e-10), ("lbfgs", 1e-8)])
def test_nonconvex_mlp_retrains_to_a_stationary_point(method, tol):
    X, y = blobs(40, 4, 3, seed=1)
    mlp = seeded(lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)))
    trained, g0 = Retrainer(mlp, TASK, (X, y), 1e-3, max_iter=500, cache=False).fit(torch.arange(40))  # from init
    assert g0 < 1e-9
    m, g = Retrainer(trained.float(), TASK, (X, y), 1e-3, method=method, tol=tol, max_iter=500,
                     cache=False).fit(torch.arange(1, 40))
    assert g < 10 * tol
    assert m[0].weight.dtype == torch.float64  # retraining runs in float64 whatever the model dtype


def test_cold_start_reaches_the_same_optimum_and_cache_dir_from_env(logistic, monkeypatch, tmp_path):
    model, train, _, _, _ = logistic
    monkeypatch.setenv("INFLUENT_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    init = seeded(lambda: nn.Linear(4, 3), seed=5).state_dict()
    cold, g = Retrainer(model, TASK, train, WD, warm_start=False, init_state=init).fit(torch.arange(100))
    assert g < 1e-9 and list((tmp_path / "env").glob("*.pt"))
    torch.testing.assert_close(cold.weight, model.weight.detach(), rtol=0, atol=1e-8)
    with pytest.raises(inf.InputError, match="init_state"):
        Retrainer(model, TASK, train, WD, warm_start=False)


def test_adam_recipe_retrains_like_training_and_follows_its_seed(tmp_path):
    """method='adam' is fit_adam from the initialisation on the subset; the seed picks the batch order."""
    X, y = blobs(60, 4, 3, seed=2)
    net = seeded(lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)))
    init = {k: v.clone() for k, v in net.state_dict().items()}
    keep = torch.arange(10, 60)
    rt = Retrainer(net, TASK, (X, y), 1e-3, method="adam", max_iter=3, batch_size=8, lr=1e-2, warm_start=False,
                   init_state=init, cache_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a recipe is not held to ‖∇R‖ < tol
        (a, ga), (c, _) = rt.fit_many([keep, keep], seeds=[0, 1])
        b, _ = rt.fit(keep, seed=0)
    oracle = copy.deepcopy(net).double()
    g_oracle = fit_adam(oracle, TASK, (X[keep].double(), y[keep]), weight_decay=1e-3, epochs=3, batch_size=8,
                        lr=1e-2, seed=0)
    torch.testing.assert_close(a[0].weight, oracle[0].weight, rtol=0, atol=1e-12)
    assert ga == pytest.approx(g_oracle) and ga > 1e-3
    assert torch.equal(a[0].weight, b[0].weight) and not torch.allclose(a[0].weight, c[0].weight)
    assert rt.misses_ == 2 and rt.hits_ == 1  # seeds 0 and 1 are two entries; the repeat comes from the cache
    with pytest.raises(inf.InputError, match="batch_size"):
        Retrainer(net, TASK, (X, y), 1e-3, method="adam", batch_size=0)


def test_loo_is_predicted_by_exact_influence(logistic):
    model, train, query, scores, cache = logistic
    removed = list(range(0, 100, 4))
    res = leave_one_out(model, TASK, train, query, removed, WD, cache_dir=cache)
    assert res.actual.shape == (6, 25) and (res.grad_norms < 1e-9).all()
    r = res.pearson(scores)
    assert r["all"] > 0.95 and r["stable"] > 0.95, r
    assert r["n_stable"] >= 20  # convex: almost every removal stays in the Newton basin
    assert res.spearman(scores)["all"] > 0.8
    top = int(scores.values[0].argmax())  # the top proponent's removal raises the query loss
    assert leave_one_out(model, TASK, train, (query[0][:1], query[1][:1]), [top], WD,
                         cache_dir=cache).actual[0, 0] > 0


def test_lds_of_exact_influence_reaches_the_noise_ceiling(logistic):
    model, train, query, scores, cache = logistic
    ceiling = noise_ceiling(model, TASK, train, query, WD, m=30, cache_dir=cache)
    exact = lds(scores, model, TASK, train, query, WD, m=30, cache_dir=cache)
    assert ceiling.value > 0.99  # convex: both runs find the same optimum
    assert exact.value >= min(0.8, ceiling.value - 0.1), (exact.value, ceiling.value)
    assert exact.per_query.shape == (6,) and exact.subsets.shape == (30, 50)
    noise = torch.randn(scores.values.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(lds(noise, model, TASK, train, query, WD, m=30, cache_dir=cache).value) < 0.3


def test_detection_auc_of_perfect_and_reversed_rankings():
    mask = torch.zeros(50, dtype=torch.bool)
    mask[:5] = True
    perfect = mask.double() + 0.01 * torch.arange(50)
    assert detection_auc(perfect, mask) == {"auc": 1.0, "found_top10pct": 1.0}
    assert detection_auc(-perfect, mask) == {"auc": 0.0, "found_top10pct": 0.0}
    with pytest.raises(inf.InputError):
        detection_auc(perfect, torch.zeros(50, dtype=torch.bool))


@pytest.mark.parametrize("n,fraction,classes", [(100, 0.1, 3), (37, 0.2, 2), (10, 0.0, 4), (20, 1.0, 10)])
def test_flip_labels_flips_the_count_to_other_classes(n, fraction, classes):
    y = torch.arange(n) % classes
    noisy, mask = flip_labels(y, fraction, classes, seed=0)
    assert int(mask.sum()) == round(fraction * n)
    assert (noisy[mask] != y[mask]).all() and (noisy[~mask] == y[~mask]).all()
    assert noisy.min() >= 0 and noisy.max() < classes
    again, mask2 = flip_labels(y, fraction, classes, seed=0)
    assert torch.equal(again, noisy) and torch.equal(mask2, mask)
    if 0 < fraction < 1:
        assert not torch.equal(flip_labels(y, fraction, classes, seed=1)[1], mask)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5, 1.5])
def test_alpha_outside_the_open_interval_is_refused(logistic, alpha):
    model, train, query, scores, cache = logistic
    with pytest.raises(inf.InputError, match="alpha"):
        lds(scores, model, TASK, train, query, WD, m=10, alpha=alpha, cache_dir=cache)


def test_too_few_subsets_warn_or_raise(logistic):
    model, train, query, scores, cache = logistic
    with pytest.raises(inf.InputError, match="m=2"):
        lds(scores, model, TASK, train, query, WD, m=2, cache_dir=cache)
    with pytest.warns(UserWarning, match="not a meaningful"):
        lds(scores, model, TASK, train, query, WD, m=5, cache_dir=cache)


def test_unconverged_retraining_is_reported_by_index(logistic):
    model, train, query, _, cache = logistic
    with pytest.warns(ConvergenceWarning, match=r"did not converge") as record:
        res = leave_one_out(model, TASK, train, query, [3, 17], WD, max_iter=1, cache_dir=cache,
                            predicted_norms=torch.ones(2))
    message = str([w for w in record if issubclass(w.category, ConvergenceWarning)][-1].message)
    assert "3 (‖∇R‖=" in message and "17 (‖∇R‖=" in message
    assert (res.grad_norms > 1e-9).all()


def test_bad_method_and_removed_indices_are_refused(logistic):
    model, train, query, _, cache = logistic
    with pytest.raises(inf.InputError, match="method"):
        Retrainer(model, TASK, train, WD, method="sgd")
    with pytest.raises(inf.InputError, match="removed"):
        leave_one_out(model, TASK, train, query, [0, 100], WD, cache_dir=cache)


@pytest.mark.slow  # 7–14 s on 2 shared cores: spawn start-up of two workers
def test_parallel_retraining_gives_the_same_numbers(logistic):
    model, train, query, scores, _ = logistic
    """Spawned single-threaded workers reproduce the serial run bit for bit."""
    serial = lds(scores, model, TASK, train, query, WD, m=10, cache=False)
    parallel = lds(scores, model, TASK, train, query, WD, m=10, cache=False, workers=2)
    assert torch.equal(serial.actual, parallel.actual) and serial.value == parallel.value
