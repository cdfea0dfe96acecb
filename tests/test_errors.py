"""Bad input raises an InfluentError that says what to do, before any long work."""
import pytest
import torch
from torch import nn

import influent as inf
from influent.testing.problems import blobs, seeded


def _mlp():
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def _nan_model():
    m = seeded(_mlp)
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    return m


X, Y = blobs(12, 5, 3)

# (id, attributor kwargs, train data, model factory, error type, message fragment)
CASES = [
    ("empty-data", {}, (X[:0], Y[:0]), _mlp, inf.InputError, "empty"),
    ("length-mismatch", {}, (X, Y[:5]), _mlp, inf.InputError, "different numbers of examples"),
    ("labels-out-of-range", {}, (X, Y + 5), _mlp, inf.InputError, "labels must lie in"),
    ("float-labels", {}, (X, Y.double()), _mlp, inf.InputError, "integer class indices"),
    ("wrong-feature-count", {}, (X[:, :3], Y), _mlp, inf.InputError, "check the input shape"),
    ("nan-inputs", {}, (torch.full_like(X, float("nan")), Y), _mlp, inf.InputError, "NaN"),
    ("nan-weights", {}, (X, Y), _nan_model, inf.InputError, "NaN or Inf"),
    ("negative-damping", {"damping": -1.0}, (X, Y), _mlp, inf.InputError, "damping must be"),
    ("unknown-curvature", {"curvature": "hesian"}, (X, Y), _mlp, inf.InputError, "unknown curvature"),
    ("unknown-solver", {"solver": "cholesky"}, (X, Y), _mlp, inf.InputError, "unknown solver"),
    ("params-match-nothing", {"params": ["encoder"]}, (X, Y), _mlp, inf.InputError, "matched no trainable"),
    ("bad-batch-size", {"batch_size": 0}, (X, Y), _mlp, inf.InputError, "batch_size"),
    ("sampler-too-large", {"sampler": 100}, (X, Y), _mlp, inf.InputError, "budget"),
    ("not-a-module", {}, (X, Y), lambda: (lambda x: x), inf.InputError, "nn.Module"),
    ("unsupported-data", {}, "not data", _mlp, inf.InputError, "unsupported type"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case):
    _, kwargs, data, factory, error, fragment = case
    model = factory() if case[0] == "not-a-module" else seeded(factory) if factory is _mlp else factory()
    with pytest.raises(error, match=fragment):
        inf.Attributor(model, inf.Task.classification(), **kwargs).fit(data)


def test_scoring_before_fit_says_so():
    with pytest.raises(inf.NotFittedError, match="fit"):
        inf.Attributor(seeded(_mlp), inf.Task.classification()).score((X, Y))


def test_unknown_measurement():
    with pytest.raises(inf.InputError, match="unknown measurement"):
        inf.Task.classification("accuracy")


def test_train_mode_warns_and_is_evaluated_in_eval_mode():
    model = seeded(lambda: nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.Linear(4, 3)))
    model.train()
    with pytest.warns(UserWarning, match="train mode"):
        a = inf.Attributor(model, inf.Task.classification(), damping=0.1).fit((X, Y)).score((X, Y)).values
    model.eval()
    b = inf.Attributor(model, inf.Task.classification(), damping=0.1).fit((X, Y)).score((X, Y)).values
    assert torch.equal(a, b) and model.training is False


def test_indefinite_curvature_warns_with_the_damping_that_fixes_it():
    model = seeded(lambda: nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.Linear(4, 3)))  # untrained
    with pytest.warns(UserWarning, match="damping >="):
        attr = inf.Attributor(model, inf.Task.classification(), damping=0.05).fit((X, Y))
    assert attr.solver_.info_["suggested_damping"] > 0.05
    with pytest.raises(inf.NumericalError, match="singular.*raise the damping"):
        inf.Attributor(model, inf.Task.classification(), damping=0.0).fit((X, Y))
