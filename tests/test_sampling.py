"""Samplers of the curvature data: budget, determinism, stratification, and every curvature × solver on the subset."""
import pytest
import torch
from torch import nn

import influent as inf
from influent.curvature import make_curvature
from influent.errors import InputError
from influent.grads import ModelFunction
from influent.inputs import as_examples
from influent.params import select_params
from influent.sampling import (FeatureBased, LogitBased, Random, allocate, default_budget, kmeans, make_sampler,
                               quantile_bins)
from influent.solvers import Arnoldi, LiSSA
from influent.testing.problems import blobs, seeded
from influent.train import fit_lbfgs

DAMPING = 0.1
N = 60


def _mlp():
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


@pytest.fixture(scope="module")
def problem():
    X, y = blobs(N, 5, 3, seed=1)
    model = seeded(_mlp)
    fit_lbfgs(model, inf.Task.classification(), (X, y), weight_decay=DAMPING, max_iter=100)
    task = inf.Task.classification()
    fn = ModelFunction(model, task, select_params(model))
    return model, task, fn, as_examples((X, y)), (X[:4], y[:4])


SAMPLERS = {
    "random": lambda n: Random(n),
    "feature": lambda n: FeatureBased(n),
    "feature-k5": lambda n: FeatureBased(n, clusters=5),
    "logit-confidence": lambda n: LogitBased(n, bins=3),
    "logit-entropy": lambda n: LogitBased(n, bins=2, by="entropy"),
    "logit-margin": lambda n: LogitBased(n, bins=4, by="margin"),
}


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("n", [1, 7, 30, N])
def test_budget_respected(problem, name, n):
    _, _, fn, ex, _ = problem
    pos = SAMPLERS[name](n).select(ex, fn, seed=3)
    assert len(pos) == n and len(set(pos)) == n
    assert pos == sorted(pos) and 0 <= pos[0] and pos[-1] < N


@pytest.mark.parametrize("name", SAMPLERS)
def test_deterministic_under_seed(problem, name):
    _, _, fn, ex, _ = problem
    s = SAMPLERS[name](20)
    assert s.select(ex, fn, seed=5) == s.select(ex, fn, seed=5)
    assert any(s.select(ex, fn, seed=5) != s.select(ex, fn, seed=k) for k in range(6, 9))


@pytest.mark.parametrize("name", SAMPLERS)
def test_whole_set_is_every_example(problem, name):
    _, _, fn, ex, _ = problem
    assert SAMPLERS[name](N).select(ex, fn, seed=1) == list(range(N))


# (curvature, solver) pairs: every solver family, exact and structured curvatures
PAIRS = [("hessian", "direct"), ("ggn", "cg"), pytest.param("ggn", LiSSA(rtol=1e-7), marks=pytest.mark.slow),
         ("ggn", Arnoldi(rank=35, iterations=35)), ("kfac", "direct"), ("ekfac", "direct")]


@pytest.mark.parametrize("curvature,solver", PAIRS, ids=lambda p: p if isinstance(p, str) else type(p).__name__)
def test_every_curvature_and_solver_uses_the_sample(problem, curvature, solver):
    """Sampled scores equal the scores with the subset's curvature built by hand, and differ from the full set's."""
    model, task, fn, ex, query = problem
    kw = dict(curvature=curvature, damping=DAMPING, seed=2)
    sampler = LogitBased(15, bins=2)
    attr = inf.Attributor(model, task, solver=solver, sampler=sampler, **kw).fit(ex)
    pos = sampler.select(ex, fn, seed=2)
    assert attr.curvature_ids_ == pos
    op = make_curvature(curvature, fn, ex.subset(pos), seed=2)
    by_hand = inf.Attributor(model, task, solver=solver, **{**kw, "curvature": op}).fit(ex).score(query).values
    sampled = attr.score(query).values
    full = inf.Attributor(model, task, solver=solver, **kw).fit(ex).score(query).values
    tol = dict(rtol=1e-5, atol=1e-6 * float(full.abs().max()))
    torch.testing.assert_close(sampled, by_hand, **tol)
    assert float((sampled - full).abs().max()) > 1e-4 * float(full.abs().max())


@pytest.mark.parametrize("curvature,solver", [("hessian", "direct"), ("ekfac", "direct")])
@pytest.mark.parametrize("name", ["random", "feature", "logit-entropy"])
def test_whole_set_reproduces_unsampled_scores(problem, curvature, solver, name):
    model, task, _, ex, query = problem
    kw = dict(curvature=curvature, solver=solver, damping=DAMPING)
    full = inf.Attributor(model, task, **kw).fit(ex).score(query).values
    whole = inf.Attributor(model, task, sampler=SAMPLERS[name](N), **kw).fit(ex).score(query).values
    torch.testing.assert_close(whole, full, rtol=1e-12, atol=0)


@pytest.mark.parametrize("sizes,n", [([10, 10, 10], 7), ([1, 50, 3], 20), ([2, 2, 100], 90), ([5, 0, 5], 10),
                                     ([3, 4], 1), ([7], 7)])
def test_allocate_proportional_and_capped(sizes, n):
    counts = allocate(sizes, n)
    assert sum(counts) == n and all(0 <= c <= s for c, s in zip(counts, sizes))
    total = sum(sizes)
    for c, s in zip(counts, sizes):  # within one of the proportional share unless capped by a short stratum
        assert c == s or c >= int(n * s / total)


def test_kmeans_recovers_separated_blobs():
    X, y = blobs(90, 4, 3, seed=0, spread=0.05)
    labels = kmeans(X, 3, torch.Generator().manual_seed(0))
    # each cluster is exactly one class
    assert {(int(a), int(b)) for a, b in zip(labels, y)}.__len__() == 3


def test_feature_sampler_is_proportional_on_clusters():
    X, y = blobs(90, 5, 3, seed=0, spread=0.05)
    model = seeded(_mlp)
    fn = ModelFunction(model, inf.Task.classification(), select_params(model))
    pos = FeatureBased(30).select(as_examples((X, y)), fn, seed=0)
    assert torch.bincount(y[pos], minlength=3).tolist() == [10, 10, 10]


def test_quantile_bins_equal_counts():
    bins = quantile_bins(torch.randn(50, dtype=torch.float64), 5)
    assert torch.bincount(bins).tolist() == [10] * 5


def test_logit_sampler_strata(problem):
    """Predicted class × confidence bins: each stratum gets its proportional share (± 1)."""
    _, _, fn, ex, _ = problem
    with torch.no_grad():
        pred = fn.outputs(fn.params, ex.data).argmax(1)
    pos = LogitBased(30, bins=1).select(ex, fn, seed=0)
    share = torch.bincount(pred, minlength=3).double() * 30 / N
    assert (torch.bincount(pred[pos], minlength=3).double() - share).abs().max() <= 1


def test_named_samplers_default_budget(problem):
    model, task, fn, ex, _ = problem
    for name, cls in [("random", Random), ("feature", FeatureBased), ("logit", LogitBased)]:
        s = make_sampler(name)
        assert isinstance(s, cls) and len(s.select(ex, fn, 0)) == default_budget(N) == N
    assert default_budget(60_000) == 6_000 and default_budget(5_000) == 1_000
    attr = inf.Attributor(model, task, curvature="ggn", damping=DAMPING, sampler=10).fit(ex)
    assert len(attr.curvature_ids_) == 10


class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(5, 3, dtype=torch.float64))

    def forward(self, x):
        return x @ self.w


BAD = [
    (lambda: Random(0), "positive integer"),
    (lambda: Random(-3), "positive integer"),
    (lambda: Random(2.5), "positive integer"),
    (lambda: FeatureBased(5, clusters=0), "clusters"),
    (lambda: LogitBased(5, bins=0), "bins"),
    (lambda: LogitBased(5, by="loss"), "confidence"),
    (lambda: make_sampler("kmeans"), "random, feature, logit"),
]


@pytest.mark.parametrize("make,message", BAD)
def test_bad_options(make, message):
    with pytest.raises(InputError, match=message):
        make()


@pytest.mark.parametrize("sampler,model,message", [
    (Random(N + 1), _mlp, "exceeds"),
    (LogitBased(N + 1), _mlp, "exceeds"),
    (FeatureBased(5), NoLinear, "layer='<module name>'"),
    (FeatureBased(5, layer="nope"), _mlp, "not a module"),
])
def test_bad_input_raises_before_work(problem, sampler, model, message):
    _, task, _, ex, _ = problem
    m = seeded(model)
    with pytest.raises(InputError, match=message):
        inf.Attributor(m, task, curvature="ggn", sampler=sampler).fit(ex)


def test_named_layer_embedding(problem):
    model, task, fn, ex, _ = problem
    a = FeatureBased(20, layer="1").select(ex, fn, seed=0)   # the Tanh output = the default (last Linear input)
    b = FeatureBased(20).select(ex, fn, seed=0)
    assert a == b
