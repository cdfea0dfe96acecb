"""Parameter selection: all, last, names/regexes, a module; stable order; clear errors."""
import pytest
from torch import nn

from influent import InputError, select_params
from influent.testing.problems import seeded


def _net():
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


CASES = [
    ("all", ("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias")),
    ("last", ("4.weight", "4.bias")),
    (["2"], ("2.weight", "2.bias")),
    ([r"\d\.weight"], ("0.weight", "2.weight", "4.weight")),
    (["4.bias", "0.weight"], ("0.weight", "4.bias")),  # model order, not the order asked
]


@pytest.mark.parametrize("selection,expected", CASES, ids=[str(c[0]) for c in CASES])
def test_selection(selection, expected):
    assert select_params(seeded(_net), selection).names == expected


def test_module_selection_and_sizes():
    model = seeded(_net)
    space = select_params(model, model[2])
    assert space.names == ("2.weight", "2.bias") and space.numel == 15 and space.offsets == (0, 12)


def test_flatten_roundtrip():
    model = seeded(_net)
    space = select_params(model)
    flat = space.flatten({n: p for n, p in model.named_parameters()})
    back = space.unflatten(flat)
    for n, p in model.named_parameters():
        assert (back[n] == p).all()


@pytest.mark.parametrize("selection", [["nope"], "transformer.*"])
def test_matching_nothing_is_an_error(selection):
    with pytest.raises(InputError, match="matched no trainable parameter"):
        select_params(seeded(_net), selection)
