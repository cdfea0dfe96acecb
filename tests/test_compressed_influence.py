"""Influence on compressed gradients through the Attributor, and training rows in a gradient store."""
import copy

import pytest
import torch
from torch import nn

import influent as inf
from influent.compress import PCA, Dropout, FactoredGaussian, Gaussian, SJLT
from influent.testing.problems import blobs, seeded

X, Y = blobs(40, 5, 3, seed=11)
XQ, YQ = blobs(5, 5, 3, seed=12)
P = 5 * 6 + 6 + 6 * 3 + 3


def _mlp():
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))


@pytest.mark.parametrize("curvature", ["empirical_fisher", "ggn", "fisher"])
def test_dropout_keeping_everything_is_exact_influence(curvature):
    model = seeded(_mlp)
    exact = inf.Attributor(model, inf.Task.classification(), curvature=curvature, damping=0.1).fit((X, Y))
    full = inf.Attributor(model, inf.Task.classification(), curvature=curvature, damping=0.1,
                          compress=Dropout(k=P, seed=3)).fit((X, Y))
    torch.testing.assert_close(full.score((XQ, YQ)).values, exact.score((XQ, YQ)).values, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(full.self_influence(), exact.self_influence(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("compressor", [Gaussian(k=20, seed=1), SJLT(k=20, seed=1), Dropout(k=20, seed=1),
                                        Dropout(k=20, level="neuron", seed=1), FactoredGaussian(k=20, seed=1)],
                         ids=lambda c: repr(c))
@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_compressed_scores_follow_the_formula(compressor, solver):
    model = seeded(_mlp)
    attr = inf.Attributor(model, inf.Task.classification(), curvature="empirical_fisher", solver=solver,
                          damping=0.1, compress=compressor).fit((X, Y))
    c = attr.compressor_
    G = c.apply(attr.fn_.per_example_grads((X, Y)))
    Q = c.apply(attr.fn_.per_example_grads((XQ, YQ)))
    H = G.T @ G / G.shape[0] + 0.1 * torch.eye(G.shape[1], dtype=G.dtype)
    expected = Q @ torch.linalg.solve(H, G.T)
    torch.testing.assert_close(attr.score((XQ, YQ)).values, expected, rtol=1e-6, atol=1e-7)


def test_empirical_fisher_from_the_training_rows_equals_a_separate_curvature_pass(tmp_path):
    # no sampler: H_C is the mean outer product of the rows kept for scoring (one gradient pass); a
    # sampler over the whole set, and rows streamed from a store, must give the same scores
    from influent.sampling import Random

    model = seeded(_mlp)

    def fitted(**kw):
        store = kw.pop("store", None)
        return inf.Attributor(model, inf.Task.classification(), curvature="empirical_fisher", damping=0.1,
                              compress=Dropout(k=20, level="neuron", seed=1), **kw).fit((X, Y), store=store)

    one_pass = fitted()
    assert "curvature" in one_pass.timings_ and one_pass.train_grads_ is not None
    for other in (fitted(sampler=Random(len(X))), fitted(cache_bytes=0, store=tmp_path / "s")):
        torch.testing.assert_close(one_pass.score((XQ, YQ)).values, other.score((XQ, YQ)).values,
                                   rtol=1e-10, atol=1e-12)


def test_pca_is_fitted_on_training_gradients_and_saved(tmp_path):
    model = seeded(_mlp)
    attr = inf.Attributor(model, inf.Task.classification(), curvature="ggn", damping=0.1,
                          compress=PCA(k=10)).fit((X, Y))
    attr.save(tmp_path / "a.pt")
    again = inf.Attributor.load(tmp_path / "a.pt", model, inf.Task.classification())
    torch.testing.assert_close(again.score((XQ, YQ)).values, attr.score((XQ, YQ)).values, rtol=1e-10, atol=1e-12)


def test_exact_hessian_cannot_be_compressed():
    with pytest.raises(inf.InputError, match="cannot be restricted to compressed"):
        inf.Attributor(seeded(_mlp), inf.Task.classification(), compress=Dropout(k=10)).fit((X, Y))


def test_store_gives_the_same_scores_and_resumes(tmp_path):
    model = seeded(_mlp)
    opts = dict(curvature="ggn", damping=0.1, compress=Dropout(k=24, level="neuron", seed=2), batch_size=8)
    plain = inf.Attributor(model, inf.Task.classification(), **opts).fit((X, Y)).score((XQ, YQ)).values
    stored = inf.Attributor(model, inf.Task.classification(), **opts).fit((X, Y), store=tmp_path / "g")
    assert stored.store_.complete and stored.store_.n_rows == 40
    torch.testing.assert_close(stored.score((XQ, YQ)).values, plain, rtol=1e-12, atol=1e-14)
    again = inf.Attributor(model, inf.Task.classification(), **opts).fit((X, Y), store=tmp_path / "g")
    assert torch.equal(again.score((XQ, YQ)).values, stored.score((XQ, YQ)).values)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].bias.add_(0.01)
    with pytest.raises(inf.ConfigMismatchError, match="different model"):
        inf.Attributor(other, inf.Task.classification(), **opts).fit((X, Y), store=tmp_path / "g")


@pytest.mark.parametrize("compress", [None, Dropout(k=24, seed=2)], ids=["flat", "dropout"])
def test_scores_stream_from_the_store_when_rows_do_not_fit(tmp_path, compress):
    model = seeded(_mlp)
    curvature = "ggn" if compress is not None else "hessian"
    ref = inf.Attributor(model, inf.Task.classification(), curvature=curvature, damping=0.1,
                         compress=compress).fit((X, Y))
    streamed = inf.Attributor(model, inf.Task.classification(), curvature=curvature, damping=0.1, batch_size=16,
                              compress=compress, cache_bytes=0).fit((X, Y), store=tmp_path / "g")
    assert streamed.train_grads_ is None and len(streamed.store_.manifest["shards"]) == 3
    torch.testing.assert_close(streamed.score((XQ, YQ)).values, ref.score((XQ, YQ)).values, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(streamed.self_influence(), ref.self_influence(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_saved_compressed_attributor_scores_from_the_store_alone(tmp_path, solver):
    model = seeded(_mlp)
    attr = inf.Attributor(model, inf.Task.classification(), curvature="ggn", solver=solver, damping=0.1,
                          compress=Dropout(k=24, level="neuron", seed=2)).fit((X, Y), store=tmp_path / "g")
    attr.save(tmp_path / "a.pt")
    state = torch.load(tmp_path / "a.pt", weights_only=False)
    assert state["train"] is None and state["train_grads"] is None  # no training data in the file
    again = inf.Attributor.load(tmp_path / "a.pt", model, inf.Task.classification())
    assert again.train_ids_ == list(range(40))
    torch.testing.assert_close(again.score((XQ, YQ)).values, attr.score((XQ, YQ)).values, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(again.self_influence(), attr.self_influence(), rtol=1e-9, atol=1e-11)
