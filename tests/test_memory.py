"""Memory planner: sizes parse, stage formulas, measured activations, early refusal with a suggestion."""
import pytest
import torch

import influent as inf
from influent.errors import InputError
from influent.memory import MemoryBudgetError, activation_bytes, parse_bytes, plan
from influent.grads import ModelFunction
from influent.testing.problems import blobs, seeded

X, Y = blobs(50, 6, 3, seed=1)


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


@pytest.mark.parametrize("text,expected", [("8GB", 8 * 10**9), ("512MiB", 512 * 2**20), ("1.5 kb", 1500),
                                           (4096, 4096), ("3gib", 3 * 2**30)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1GB", 0, "8 parsecs", True])
def test_bad_budget_is_refused(bad):
    with pytest.raises(InputError, match="memory budget"):
        parse_bytes(bad)


def test_activation_bytes_grow_with_the_batch():
    model = seeded(_mlp)
    fn = ModelFunction(model, inf.Task.classification(), inf.select_params(model, "all"))
    one, ten = activation_bytes(fn, (X[:1], Y[:1])), activation_bytes(fn, (X[:10], Y[:10]))
    assert one > 0 and 8 * one <= ten <= 12 * one


def test_plan_counts_the_kept_training_rows_and_dense_curvature_exactly():
    p = plan(P=1000, width=1000, n_train=200, n_query=5, itemsize=8, rows=10, act_per_example=0,
             curvature="hessian", solver="direct", layers=None, keep_rows=True, full_scores=True, base=0)
    assert p.resident == {"training rows": 200 * 1000 * 8, "curvature": 1000 * 1000 * 8}
    assert p.stages["curvature"] == 3 * 1000 * 1000 * 8 and p.peak == sum(p.resident.values()) + p.stages["curvature"]


def test_attributor_refuses_before_work_and_suggests_what_fits():
    model = seeded(_mlp)
    attr = inf.Attributor(model, inf.Task.classification(), memory="1KB")
    with pytest.raises(MemoryBudgetError, match="exceeds the memory budget.*(compress|top_k|store)"):
        attr.fit((X, Y))
    assert not hasattr(attr, "solver_")


def test_generous_budget_records_the_plan():
    model = seeded(_mlp)
    attr = inf.Attributor(model, inf.Task.classification(), memory="100GB").fit((X, Y))
    assert attr.memory_plan_.fits and attr.memory_plan_.peak > attr.memory_plan_.base
    assert attr.score((X[:3], Y[:3])).values.shape == (3, 50)
