"""The Attributor against brute-force influence, and the conventions of DESIGN.md §1."""
import copy

import pytest
import torch
from torch import nn

import influent as inf
from influent.testing.problems import blobs, seeded
from influent.testing.reference import dense_ggn, dense_hessian, exact_influence, per_example_grads_loop
from influent.train import fit_lbfgs

DAMPING = 1e-2


def _mlp():
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


@pytest.fixture(scope="module")
def problem():
    X, y = blobs(40, 5, 3, seed=1)
    Xq, yq = blobs(7, 5, 3, seed=2)
    model = seeded(_mlp)
    fit_lbfgs(model, inf.Task.classification(), (X, y), weight_decay=DAMPING, max_iter=500)
    return model, (X, y), (Xq, yq)


ORACLES = {"hessian": dense_hessian, "ggn": dense_ggn}


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize("batch_size,cache", [(256, True), (7, False)])
def test_scores_equal_brute_force(problem, curvature, batch_size, cache):
    model, train, query = problem
    task = inf.Task.classification()
    attr = inf.Attributor(model, task, curvature=curvature, damping=DAMPING, batch_size=batch_size,
                          cache_bytes=2**30 if cache else 0).fit(train)
    space = attr.space_
    H = ORACLES[curvature](model, task, space, train)
    expected = exact_influence(per_example_grads_loop(model, task, space, query),
                               per_example_grads_loop(model, task, space, train), H, DAMPING)
    s = attr.score(query)
    assert s.values.shape == (7, 40) and list(s.train_ids) == list(range(40))
    torch.testing.assert_close(s.values, expected, rtol=1e-8, atol=1e-10)


def test_streaming_top_k_equals_full_sort(problem):
    model, train, query = problem
    full = inf.Attributor(model, inf.Task.classification(), damping=DAMPING).fit(train).score(query)
    streamed = inf.Attributor(model, inf.Task.classification(), damping=DAMPING, batch_size=6, cache_bytes=0).fit(train)
    for largest in (True, False):
        v, i = streamed.top_k(query, 5, largest=largest)
        fv, fi = full.top_k(5, largest=largest)
        torch.testing.assert_close(v, fv, rtol=1e-10, atol=1e-12)
        assert torch.equal(i, fi)


def test_self_influence_is_the_diagonal_and_nonnegative(problem):
    model, train, _ = problem
    attr = inf.Attributor(model, inf.Task.classification(), curvature="ggn", damping=DAMPING, batch_size=9).fit(train)
    si = attr.self_influence()
    torch.testing.assert_close(si, torch.diagonal(attr.score(train).values), rtol=1e-10, atol=1e-12)
    assert (si >= 0).all()


def test_ids_follow_the_examples(problem):
    model, train, query = problem
    ids = [f"train-{i}" for i in range(40)]
    s = inf.Attributor(model, inf.Task.classification(), damping=DAMPING).fit(train, ids=ids).score(query, ids=list("abcdefg"))
    assert s.train_ids == ids and s.query_ids == list("abcdefg")
    assert s.proponents(2)[0][0] in ids


def test_save_and_load_give_the_same_scores(problem, tmp_path):
    model, train, query = problem
    attr = inf.Attributor(model, inf.Task.classification(), damping=DAMPING).fit(train)
    attr.save(tmp_path / "attr.pt")
    again = inf.Attributor.load(tmp_path / "attr.pt", model, inf.Task.classification())
    assert torch.equal(again.score(query).values, attr.score(query).values)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.add_(1e-3)
    with pytest.raises(inf.ConfigMismatchError):
        inf.Attributor.load(tmp_path / "attr.pt", other, inf.Task.classification())


def test_prob_measurement_is_p_times_loss_score(problem):
    model, train, query = problem
    loss = inf.Attributor(model, inf.Task.classification("loss"), damping=DAMPING).fit(train).score(query).values
    prob = inf.Attributor(model, inf.Task.classification("prob"), damping=DAMPING).fit(train).score(query).values
    with torch.no_grad():
        p_y = torch.softmax(model(query[0]), -1).gather(1, query[1][:, None])
    torch.testing.assert_close(prob, p_y * loss, rtol=1e-9, atol=1e-12)


# ----- ground truth on a convex model: leave-one-out retraining ---------------------------------
@pytest.fixture(scope="module")
def logistic():
    X, y = blobs(50, 4, 3, seed=3, spread=1.5)
    Xq, yq = blobs(6, 4, 3, seed=4, spread=1.5)
    model = seeded(lambda: nn.Linear(4, 3))
    fit_lbfgs(model, inf.Task.classification(), (X, y), weight_decay=DAMPING, tol=1e-12)
    return model, (X, y), (Xq, yq)


def _loo_changes(model, train, query, removed):
    task = inf.Task.classification()
    with torch.no_grad():
        base = task.train_loss(model, query)
    out = []
    for i in removed:
        keep = torch.arange(train[0].shape[0]) != i
        m = copy.deepcopy(model)  # warm start from θ*, strict optimum (convex)
        fit_lbfgs(m, task, (train[0][keep], train[1][keep]), weight_decay=DAMPING, tol=1e-12)
        with torch.no_grad():
            out.append(task.train_loss(m, query) - base)
    return torch.stack(out, 1)  # [n_query, n_removed]


def test_loo_retraining_is_predicted(logistic):
    model, train, query = logistic
    n = train[0].shape[0]
    s = inf.Attributor(model, inf.Task.classification(), damping=DAMPING).fit(train).score(query).values
    removed = list(range(0, n, 2))
    actual = _loo_changes(model, train, query, removed)
    predicted = s[:, removed] / n
    r = torch.corrcoef(torch.stack([predicted.flatten(), actual.flatten()]))[0, 1]
    assert r > 0.95, f"LOO Pearson {r:.3f}"


def test_removing_the_top_proponent_raises_the_query_loss(logistic):
    model, train, query = logistic
    s = inf.Attributor(model, inf.Task.classification(), damping=DAMPING).fit(train).score(query).values
    top, bottom = int(s[0].argmax()), int(s[0].argmin())
    actual = _loo_changes(model, train, query[:1] if False else (query[0][:1], query[1][:1]), [top, bottom])
    assert actual[0, 0] > 0 > actual[0, 1]


def test_progress_bars_go_to_stderr_and_change_nothing(problem, capsys):
    model, train, query = problem
    quiet = inf.Attributor(model, inf.Task.classification(), damping=DAMPING).fit(train).score(query).values
    loud = inf.Attributor(model, inf.Task.classification(), damping=DAMPING, progress=True).fit(train)
    assert torch.equal(loud.score(query).values, quiet)
    assert "training gradients" in capsys.readouterr().err
