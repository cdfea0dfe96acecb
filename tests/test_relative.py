"""Relative influence (RelatIF): normalisers against brute force, and a constructed outlier that
dominates raw rankings but not relative ones."""
import pytest
import torch
from torch import nn

import influent as inf
from influent.relative import normalise, relative_normalisers, relative_scores
from influent.testing.problems import blobs, seeded
from influent.train import fit_lbfgs

WD = 1e-2


@pytest.fixture(scope="module")
def outlier_problem():
    """Blobs plus one far-away point with a wrong label: a huge gradient, so a huge raw score everywhere."""
    X, y = blobs(40, 4, 2, seed=11, spread=0.8)
    far = X[y == 0].mean(0) * 8.0  # far out along the class-0 direction, but labelled 1
    X = torch.cat([X, far[None]])
    y = torch.cat([y, torch.tensor([1])])
    Xq, yq = blobs(20, 4, 2, seed=12, spread=0.8)
    model = seeded(lambda: nn.Linear(4, 2))
    fit_lbfgs(model, inf.Task.classification(), (X, y), weight_decay=WD, tol=1e-12)
    attr = inf.Attributor(model, inf.Task.classification(), damping=WD).fit((X, y))
    return attr, (Xq, yq), len(y) - 1


@pytest.mark.parametrize("kind", ["theta", "loss"])
def test_normalisers_equal_brute_force(outlier_problem, kind):
    attr, _, _ = outlier_problem
    from influent.scoring import all_gradients, precondition

    G = all_gradients(attr.fn_, attr.train_examples_, 1024)
    PG = precondition(attr.solver_, G)
    expected = PG.norm(dim=1) if kind == "theta" else (PG * G).sum(1).sqrt()
    torch.testing.assert_close(relative_normalisers(attr, kind), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["theta", "loss"])
def test_outlier_dominates_raw_but_not_relative_rankings(outlier_problem, kind):
    attr, query, outlier = outlier_problem
    raw = attr.score(query).values
    rel = relative_scores(attr, query, kind).values
    # raw: the outlier is the most influential point (in absolute value) for most queries
    raw_top = raw.abs().argmax(1)
    assert float((raw_top == outlier).double().mean()) >= 0.9
    # relative: it no longer tops the rankings, and the sign of every score is kept
    rel_top = rel.abs().argmax(1)
    assert float((rel_top == outlier).double().mean()) <= 0.35
    assert torch.equal(torch.sign(rel), torch.sign(raw))


def test_zero_normaliser_gives_zero_and_shapes_are_checked(outlier_problem):
    attr, query, _ = outlier_problem
    s = attr.score(query)
    norms = torch.ones(s.values.shape[1], dtype=s.values.dtype)
    norms[3] = 0.0
    out = normalise(s, norms)
    assert torch.all(out.values[:, 3] == 0) and torch.equal(out.values[:, 4], s.values[:, 4])
    with pytest.raises(inf.InputError, match="normalisers"):
        normalise(s, norms[:-1])
    with pytest.raises(inf.InputError, match="unknown relative kind"):
        relative_normalisers(attr, "gradient")
