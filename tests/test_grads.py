"""Per-example gradients: vmap(grad) equals a float64 loop, for models with buffers, ties, frozen parts."""
import pytest
import torch
from torch import nn

from influent import Task
from influent.grads import ModelFunction
from influent.params import select_params
from influent.testing.problems import TiedAutoencoder, blobs, regression_data, seeded
from influent.testing.reference import per_example_grads_loop


def _frozen_first():
    m = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    m[0].weight.requires_grad_(False)
    return m


CASES = [
    dict(id="mlp", model=lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)),
         task=Task.classification(), data=lambda: blobs(12, 5, 3)),
    dict(id="batchnorm-eval", model=lambda: nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3)),
         task=Task.classification(), data=lambda: blobs(12, 5, 3)),
    dict(id="frozen", model=_frozen_first, task=Task.classification(), data=lambda: blobs(12, 5, 3)),
    dict(id="tied", model=lambda: TiedAutoencoder(4, 3), task=Task.regression(),
         data=lambda: (regression_data(10, 4, 4)[0], regression_data(10, 4, 4)[0])),
    dict(id="regression", model=lambda: nn.Linear(4, 2), task=Task.regression(), data=lambda: regression_data(10, 4, 2)),
    dict(id="margin", model=lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)),
         task=Task.classification("margin"), data=lambda: blobs(12, 5, 3), query=True),
    dict(id="prob", model=lambda: nn.Linear(5, 3), task=Task.classification("prob"), data=lambda: blobs(12, 5, 3), query=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_vmap_equals_loop(case):
    model = seeded(case["model"])
    if case["id"] == "batchnorm-eval":  # non-trivial running statistics
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    space = select_params(model, "all")
    batch = case["data"]()
    query = case.get("query", False)
    fast = ModelFunction(model, case["task"], space).per_example_grads(batch, query=query)
    slow = per_example_grads_loop(model, case["task"], space, batch, query=query)
    assert fast.shape == (batch[0].shape[0], space.numel)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


def test_tied_weight_counts_once():
    model = seeded(lambda: TiedAutoencoder(4, 3))
    space = select_params(model)
    assert space.names.count("enc.weight") == 1
    assert space.numel == 4 * 3 + 3 + 4


def test_frozen_parameters_are_excluded():
    space = select_params(seeded(_frozen_first))
    assert "0.weight" not in space.names and "0.bias" in space.names
