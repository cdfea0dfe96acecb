"""Memorisation by the sign of aggregate held-out influence (influent.apps.memorization)."""
import copy

import pytest
import torch
from torch import nn

import influent as inf
from influent.apps import memorization
from influent.testing.problems import blobs, seeded
from influent.train import fit_lbfgs

WD = 1e-2
FLIPPED = 5


@pytest.fixture(scope="module")
def separable():
    """Well-separated blobs, one training label flipped, a small MLP trained to its optimum."""
    X_all, y_all = blobs(75, 4, 3, seed=21, spread=0.4)  # one draw of the centres: train 45, held out 30
    X, y, V = X_all[:45], y_all[:45], (X_all[45:], y_all[45:])
    y_noisy = y.clone()
    y_noisy[FLIPPED] = (y[FLIPPED] + 1) % 3
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)))
    fit_lbfgs(model, inf.Task.classification(), (X, y_noisy), weight_decay=WD, max_iter=3000, tol=1e-10)
    return model, (X, y_noisy), V


CASES = [("loss", "all"), ("margin", "all"), ("loss", "last"), ("margin", "last")]


@pytest.mark.parametrize("measurement,params", CASES)
def test_flipped_label_is_memorised_and_ranked_first(separable, measurement, params):
    model, train, V = separable
    attr = inf.Attributor(model, inf.Task.classification(measurement), params=params, damping=WD).fit(train)
    res = memorization.analyze(attr, V, self_influence=True)
    assert res.labels[FLIPPED] == "memorised" and bool(res.memorised[FLIPPED])
    assert int(res.ranking[0]) == FLIPPED                     # the most harmful point comes first
    assert res.ranked(1)[0][0] == FLIPPED and res.ranked(1)[0][2] == "memorised"
    assert float(res.memorised.double().mean()) < 0.5         # most clean points generalise
    assert torch.all(res.self_influence >= 0)
    torch.testing.assert_close(res.aggregate, attr.score(V).values.mean(0), rtol=1e-8, atol=1e-12)


def test_labels_follow_the_sign_and_plot_is_written(separable, tmp_path):
    model, train, V = separable
    attr = inf.Attributor(model, inf.Task.classification(), damping=WD).fit(train)
    res = memorization.analyze(attr, V)
    assert torch.equal(res.memorised, res.aggregate <= 0)
    assert torch.equal(res.aggregate[res.ranking], res.aggregate.sort().values)
    flipped = torch.zeros(len(res.aggregate), dtype=torch.bool)
    flipped[FLIPPED] = True
    for i, kw in enumerate([{}, {"flipped": flipped}]):
        res.plot(tmp_path / f"m{i}.png", **kw)
        assert (tmp_path / f"m{i}.png").stat().st_size > 1000


def test_deterministic(separable):
    model, train, V = separable
    runs = [memorization.analyze(inf.Attributor(model, inf.Task.classification("margin"), damping=WD, seed=3)
                                 .fit(train), V) for _ in range(2)]
    assert torch.equal(runs[0].aggregate, runs[1].aggregate) and torch.equal(runs[0].ranking, runs[1].ranking)


def _bad_heldout(V):
    X, y = V
    return {
        "empty": ((X[:0], y[:0]), "empty"),
        "one class": ((X[y == 0], y[y == 0]), "only class 0"),
    }


@pytest.mark.parametrize("case", ["empty", "one class"])
def test_bad_heldout_is_refused(separable, case):
    model, train, V = separable
    attr = inf.Attributor(model, inf.Task.classification(), damping=WD).fit(train)
    data, message = _bad_heldout(V)[case]
    with pytest.raises(inf.InputError, match=message):
        memorization.analyze(attr, data)


def test_unfitted_attributor_and_unknown_layer_are_refused(separable):
    model, train, V = separable
    with pytest.raises(inf.NotFittedError):
        memorization.analyze(inf.Attributor(model, inf.Task.classification()), V)
    with pytest.raises(inf.InputError, match="matched no trainable parameter"):
        inf.Attributor(model, inf.Task.classification(), params=["classifier.weight"]).fit(train)


def _objective_grad(model, train, names, wd):
    params = [p for n, p in model.named_parameters() if n in names]
    loss = inf.Task.classification().train_loss(model, train).mean() + 0.5 * wd * sum((p ** 2).sum() for p in params)
    return torch.sqrt(sum((g ** 2).sum() for g in torch.autograd.grad(loss, params)))


def test_refit_reaches_the_last_layer_optimum_and_touches_nothing_else():
    X, y = blobs(80, 4, 3, seed=5, spread=0.8)
    X = X.double()
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))).double()
    model[0].weight.requires_grad_(False)                 # a frozen parameter stays frozen
    before = copy.deepcopy(model.state_dict())
    polished, gnorm = memorization.refit(model, inf.Task.classification(), (X, y), weight_decay=1e-2, tol=1e-10)
    last = {"2.weight", "2.bias"}
    assert float(_objective_grad(model, (X, y), last, 1e-2)) > 1e-2     # the seeded model is far from it
    assert gnorm < 1e-8 and float(_objective_grad(polished, (X, y), last, 1e-2)) < 1e-8
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())          # the original is untouched
    assert all(torch.equal(before[k], v) for k, v in polished.state_dict().items() if not k.startswith("2."))
    assert not torch.equal(before["2.weight"], polished[2].weight)
    assert [p.requires_grad for p in polished.parameters()] == [False, True, True, True]
