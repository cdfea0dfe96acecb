"""Same seed, same bits: every random part (compressors, samplers, Arnoldi start vector, Fisher labels,
stochastic LiSSA) takes a seed; runs and resumed runs are bit-identical; batch sizes agree to round-off."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import influent as inf
from influent import solvers
from influent.compress import Dropout, Gaussian, SJLT
from influent.sampling import FeatureBased, LogitBased, Random
from influent.testing.problems import blobs, seeded

X, Y = blobs(40, 5, 3, seed=4)
XQ, YQ = X[:4], Y[:4]


pytestmark = pytest.mark.usefixtures("one_thread")


def model() -> nn.Module:
    return seeded(lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)))


def scores(seed: int = 0, batch_size: int = 16, **kw) -> torch.Tensor:
    opts = {"curvature": "ggn", "damping": 1e-2, **kw}
    attr = inf.Attributor(model(), inf.Task.classification(), seed=seed, batch_size=batch_size, **opts)
    return attr.fit((X, Y)).score((XQ, YQ)).values


# (id, options built from a seed, whether the seed must change the scores)
RANDOM_PARTS = [
    ("arnoldi-start-vector", lambda s: {"solver": solvers.Arnoldi(rank=3, iterations=5, seed=s)}),
    ("fisher-labels", lambda s: {"curvature": "fisher", "seed": s}),
    ("random-sampler", lambda s: {"sampler": Random(12), "seed": s}),
    ("feature-sampler", lambda s: {"sampler": FeatureBased(12), "seed": s}),
    ("logit-sampler", lambda s: {"sampler": LogitBased(12), "seed": s}),
    ("gaussian-compressor", lambda s: {"compress": Gaussian(k=10, seed=s)}),
    ("sjlt-compressor", lambda s: {"compress": SJLT(k=10, seed=s)}),
    ("dropout-compressor", lambda s: {"compress": Dropout(k=10, seed=s)}),
    ("stochastic-lissa", lambda s: {"solver": solvers.LiSSA(batch_size=8, depth=30, seed=s), "damping": 0.5}),
]


@pytest.mark.parametrize("name,options", RANDOM_PARTS, ids=[r[0] for r in RANDOM_PARTS])
def test_same_seed_same_bits_other_seed_other_scores(name, options):
    base = options(0)
    seed = base.pop("seed", 0)
    a = scores(seed, **base)
    base = options(0)
    b = scores(base.pop("seed", 0), **base)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    other = options(1)
    c = scores(other.pop("seed", 0), **other)
    assert not torch.allclose(a, c, rtol=1e-6, atol=0), f"{name}: the seed does not reach the random part"


# batch size must not matter beyond float64 round-off (≤ 1e-10 relative)
BATCH_CASES = [
    ("hessian-direct", {"curvature": "hessian", "damping": 1.0}),
    ("ggn-cg", {"solver": solvers.CG(rtol=1e-12)}),
    ("fisher", {"curvature": "fisher"}),
    ("ekfac", {"curvature": "ekfac"}),
    ("random-sampler", {"sampler": Random(12)}),
    ("gaussian-compressor", {"compress": Gaussian(k=10, seed=3)}),
    ("arnoldi", {"solver": solvers.Arnoldi(rank=10, iterations=20)}),
]


@pytest.mark.parametrize("name,options", BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_batch_size_7_vs_64(name, options):
    small, large = scores(batch_size=7, **options), scores(batch_size=64, **options)
    rel = float((small - large).abs().max() / large.abs().max())
    assert rel <= 1e-10, f"{name}: batch sizes 7 and 64 differ by {rel:.2e} (relative)"


def test_resumed_store_gives_the_same_bits(tmp_path, monkeypatch):
    """A fit whose gradient storing fails part-way, then reruns, equals an uninterrupted fit bit for bit."""
    from influent import attributor as attributor_module
    from influent.store import fill_store

    def fit(store):
        return inf.Attributor(model(), inf.Task.classification(), curvature="ggn", damping=1e-2, batch_size=8,
                              cache_bytes=0).fit((X, Y), store=store)

    reference = fit(tmp_path / "a").score((XQ, YQ)).values

    def failing(store, ids, batches, compute, progress=False):
        def once(b, n=[0]):
            n[0] += 1
            if n[0] == 3:
                raise KeyboardInterrupt  # the user pressed Ctrl-C during the third shard
            return compute(b)
        return fill_store(store, ids, batches, once, progress)

    monkeypatch.setattr(attributor_module, "fill_store", failing)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "b")
    monkeypatch.undo()
    from influent.store import GradientStore
    assert GradientStore.open(tmp_path / "b").n_rows == 16
    assert torch.equal(fit(tmp_path / "b").score((XQ, YQ)).values, reference)
