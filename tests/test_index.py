"""FAISS retrieval: the exact index returns the Attributor's top-k; IVF/HNSW recall; fingerprint checks."""
import pytest
import torch

import influent as inf
from influent.errors import ConfigMismatchError, InputError
from influent.testing.problems import blobs, seeded

faiss = pytest.importorskip("faiss")
from influent.index import GradientIndex  # noqa: E402

X, Y = blobs(300, 6, 3, seed=1, dtype=torch.float32)
XQ, YQ = blobs(5, 6, 3, seed=2, dtype=torch.float32)


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


@pytest.fixture(scope="module")
def fitted():
    model = seeded(_mlp, dtype=torch.float32)
    attr = inf.Attributor(model, inf.Task.classification(), curvature="empirical_fisher", damping=1e-2,
                          compress=inf.compress.Dropout(40, level="neuron", seed=0)).fit((X, Y))
    return model, attr


def test_flat_index_equals_streamed_top_k(fitted):
    _, attr = fitted
    values, idx = attr.top_k((XQ, YQ), 7)
    found, ids = GradientIndex.build(attr, "flat").search(attr, (XQ, YQ), k=7)
    torch.testing.assert_close(found, values.float(), rtol=1e-4, atol=1e-5)
    assert ids == [[attr.train_ids_[j] for j in row] for row in idx.tolist()]


@pytest.mark.parametrize("kind,options", [("ivf", {"nprobe": 16}), ("hnsw", {"ef_search": 64})])
def test_approximate_indexes_recall_the_exact_top_10(fitted, kind, options):
    _, attr = fitted
    _, exact = GradientIndex.build(attr, "flat").search(attr, (XQ, YQ), k=10)
    _, approx = GradientIndex.build(attr, kind, nlist=16).search(attr, (XQ, YQ), k=10, **options)
    recall = sum(len(set(a) & set(e)) for a, e in zip(approx, exact)) / (10 * len(exact))
    assert recall >= 0.95


def test_the_mips_to_l2_reduction_searched_exhaustively_is_the_exact_top_k(fitted, tmp_path):
    # IVF probing every list is exhaustive: the reduction alone decides, and must give the flat answer
    _, attr = fitted
    values, ids = GradientIndex.build(attr, "flat").search(attr, (XQ, YQ), k=10)
    index = GradientIndex.build(attr, "ivf", nlist=8, mips="l2")
    assert index.max_norm is not None and index.index.d == attr.compressor_.k_ + 1
    found, found_ids = index.search(attr, (XQ, YQ), k=10, nprobe=8)
    assert found_ids == ids
    torch.testing.assert_close(found, values, rtol=1e-3, atol=1e-3)
    index.save(tmp_path / "ivf")
    again, again_ids = GradientIndex.load(tmp_path / "ivf", attr).search(attr, (XQ, YQ), k=10, nprobe=8)
    assert again_ids == ids


def test_save_load_and_fingerprint_mismatch(fitted, tmp_path):
    model, attr = fitted
    GradientIndex.build(attr, "flat").save(tmp_path / "idx")
    again = GradientIndex.load(tmp_path / "idx", attr)
    assert again.index.ntotal == len(X)
    other = inf.Attributor(model, inf.Task.classification(), curvature="empirical_fisher", damping=1e-2,
                           compress=inf.compress.Dropout(40, level="neuron", seed=1)).fit((X, Y))
    with pytest.raises(ConfigMismatchError, match="compressor"):
        GradientIndex.load(tmp_path / "idx", other)


@pytest.mark.parametrize("call,match", [
    (lambda a: GradientIndex.build(a, "annoy"), "unknown index kind"),
    (lambda a: GradientIndex.build(a, "ivf", nlist=10_000), "nlist"),
    (lambda a: GradientIndex.build(a, "flat").search(a, (XQ, YQ), k=0), "positive integer"),
    (lambda a: GradientIndex.load("/nonexistent/index"), "no index"),
    (lambda a: GradientIndex.build(a, "hnsw", mips="cosine"), "mips"),
])
def test_bad_input(fitted, call, match):
    with pytest.raises(InputError, match=match):
        call(fitted[1])
