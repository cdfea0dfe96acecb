"""Selective removal during training (influent.apps.pruning)."""
import copy

import pytest
import torch
from torch import nn

import influent as inf
from influent.apps import pruning
from influent.eval import flip_labels
from influent.testing.problems import blobs, seeded

KW = dict(epochs=6, every=2, warmup=2, batch_size=16, lr=1e-2, weight_decay=1e-2, damping=1e-2)


@pytest.fixture(scope="module")
def noisy():
    X, y = blobs(120, 4, 3, seed=31, spread=0.5)
    y_noisy, flipped = flip_labels(y[:90], 0.2, 3, seed=1)
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)))
    return model, (X[:90], y_noisy), (X[90:], y[90:]), flipped


def _same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_cap_zero_equals_plain_training(noisy):
    model, train, val, _ = noisy
    capped = pruning.prune(model, train, val, cap_round=0, cap_total=0, **KW)
    plain = pruning.prune(model, train, val, select="none", **KW)
    # plain training written out: one uninterrupted run of the same seeded epochs
    net = copy.deepcopy(model)
    opt = torch.optim.Adam(net.parameters(), lr=KW["lr"])
    pruning.train_epochs(net, inf.Task.classification(), train, torch.ones(90, dtype=torch.bool), KW["epochs"], opt,
                         torch.Generator().manual_seed(0), KW["batch_size"], KW["weight_decay"])
    assert capped.counts == [0, 0] and bool(capped.kept.all())
    assert _same_weights(capped.model, plain.model) and _same_weights(capped.model, net)
    assert not _same_weights(capped.model, model)      # it did train
    assert capped.sample_passes == plain.sample_passes == 6 * 90


def test_influence_removal_prefers_flipped_labels_and_respects_caps(noisy):
    model, train, val, flipped = noisy
    res = pruning.prune(model, train, val, cap_round=6, cap_total=10, **KW)
    removed = torch.cat(res.removed)
    assert res.counts[0] <= 6 and sum(res.counts) <= 10 and removed.numel() == int((~res.kept).sum())
    assert removed.unique().numel() == removed.numel()
    precision = float(flipped[removed].double().mean())
    assert precision > 0.5 > float(flipped.double().mean())   # far above the 20 % base rate
    rand = pruning.prune(model, train, val, select="random", counts=res.counts, cap_round=6, cap_total=10, **KW)
    assert rand.counts == res.counts


def test_per_class_cap(noisy):
    model, train, val, _ = noisy
    res = pruning.prune(model, train, val, select="random", cap_round=30, cap_total=60, cap_per_class=0.1, **KW)
    removed_labels = train[1][torch.cat(res.removed)]
    assert all(int((removed_labels == c).sum()) <= 3 for c in range(3))


@pytest.mark.parametrize("select", ["influence", "random"])
def test_deterministic_under_a_seed(noisy, select):
    model, train, val, _ = noisy
    a, b, c = (pruning.prune(model, train, val, select=select, cap_round=5, cap_total=10, seed=s, **KW)
               for s in (4, 4, 5))
    assert _same_weights(a.model, b.model) and all(torch.equal(x, y) for x, y in zip(a.removed, b.removed))
    assert not _same_weights(a.model, c.model)


BAD = [  # (options, expected message)
    ({"cap_total": 90}, "cap_total=90 allows removing 90 of 90"),
    ({"cap_round": 1.0}, "cap_round=1.0"),
    ({"cap_round": -1}, "cap_round must be"),
    ({"params": ["no_such_layer"]}, "matched no trainable parameter"),
    ({"every": 0}, "every must be a positive integer"),
    ({"select": "magic"}, "unknown select"),
    ({"counts": [1, 1]}, "only for select='random'"),
]


@pytest.mark.parametrize("options,message", BAD)
def test_bad_options_are_refused(noisy, options, message):
    model, train, val, _ = noisy
    with pytest.raises(inf.InputError, match=message):
        pruning.prune(model, train, val, **{**KW, **options})


@pytest.mark.parametrize("which", ["empty", "one class"])
def test_bad_validation_set_is_refused(noisy, which):
    model, train, (Xv, yv), _ = noisy
    val = (Xv[:0], yv[:0]) if which == "empty" else (Xv[yv == 1], yv[yv == 1])
    with pytest.raises(inf.InputError, match="empty|only class 1"):
        pruning.prune(model, train, val, **KW)


def test_refit_scores_each_round_on_a_refit_copy():
    """Round one of refit_params=True removes exactly what influence on the L-BFGS-refit model calls harmful."""
    X, y = blobs(120, 4, 3, seed=31, spread=0.5)
    X = X.double()
    y_noisy, _ = flip_labels(y[:90], 0.2, 3, seed=1)
    train, val = (X[:90], y_noisy), (X[90:], y[90:])
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))).double()
    kw = dict(KW, epochs=4, cap_round=5, cap_total=8)
    res = pruning.prune(model, train, val, refit_params=True, **kw)
    plain = pruning.prune(model, train, val, **kw)
    # by hand: the model after the warm-up epochs, its last layer refit, influence over val
    warm = pruning.prune(model, train, val, select="none", **dict(kw, epochs=KW["warmup"])).model
    task = inf.Task.classification()
    polished, _ = inf.apps.memorization.refit(warm, task, train, weight_decay=KW["weight_decay"])
    attr = inf.Attributor(polished, task, params="last", curvature="ggn", damping=KW["damping"]).fit(train)
    agg = attr.summed_score(val) / 30
    harmful = torch.nonzero(agg < 0).flatten()
    expected = harmful[torch.argsort(agg[harmful], stable=True)][:5]
    assert torch.equal(res.removed[0], expected)
    assert res.rounds[0]["refit_grad_norm"] < 1e-5 and "refit_grad_norm" not in plain.rounds[0]
    assert not torch.equal(res.removed[0], plain.removed[0])  # the refit changes what is removed
