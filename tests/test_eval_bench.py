"""The benchmark against other libraries: adapters keep influent's convention, missing libraries are named.

The adapter checks run only where a library imports (benchmarks/requirements-libs.txt builds
.venv-libs); in influent's own .venv they are skipped and the pure-Python parts are still tested.
"""
import importlib.util
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

import influent as inf
from influent.testing.problems import blobs, seeded
from influent.train import fit_lbfgs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from libs import Problem, adapter, as_scores, missing  # noqa: E402
from libs.report import targets  # noqa: E402

WD = 1e-2


@pytest.fixture(scope="module")
def tiny():
    """A float64 tanh MLP 4→6→3 trained to a strict optimum on 60 blobs, 5 queries, and its exact scores."""
    X, y = blobs(60, 4, 3, seed=2, spread=1.5)
    Xq, yq = blobs(5, 4, 3, seed=7, spread=1.5)
    model = seeded(lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)))
    fit_lbfgs(model, inf.Task.classification(), (X, y), weight_decay=WD, tol=1e-10, max_iter=2000)
    exact = inf.Attributor(model.eval(), inf.Task.classification(), curvature="hessian", solver="direct",
                           damping=WD).fit((X, y)).score((Xq, yq)).values
    return Problem("tiny", model, (X, y), (Xq, yq), WD, Path(tempfile.mkdtemp()), batch_size=20), exact


def test_as_scores_fixes_layout_sign_and_scale():
    v = torch.arange(6.0).reshape(3, 2)  # [train, query]
    out = as_scores(v, 2, 3, transpose=True, sign=-1.0, scale=2.0)
    assert out.dtype == torch.float64 and torch.equal(out, -2.0 * v.T.double())
    with pytest.raises(ValueError, match="expected"):
        as_scores(v, 2, 3)


def test_a_missing_library_is_named_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "kronfluence", None)  # import fails as when it is not installed
    reason = missing("kronfluence")
    assert "kronfluence not importable" in reason and "requirements-libs.txt" in reason
    assert missing("influent") is None


@pytest.mark.parametrize("rows,verdict", [
    ({"influent: ekfac+direct": {"lds": 0.5, "seconds": 1.0}, "kronfluence: ekfac": {"lds": 0.4, "seconds": 9.0}},
     "ekfac+direct"),
    ({"influent: ekfac+direct": {"lds": 0.5, "seconds": 4.0}, "kronfluence: ekfac": {"lds": 0.4, "seconds": 9.0}},
     "MISSED"),
    ({"influent: ekfac+direct": {"lds": 0.3, "seconds": 1.0}, "kronfluence: ekfac": {"lds": 0.4, "seconds": 9.0}},
     "MISSED"),
])
def test_task_a_target_needs_higher_lds_in_a_third_of_the_time(rows, verdict):
    line = targets("a", rows)[0]
    assert "kronfluence: ekfac" in line and verdict in line


def test_influent_adapter_reproduces_the_attributor(tiny):
    p, exact = tiny
    torch.testing.assert_close(adapter("influent").methods("small")["hessian+direct (exact)"](p), exact)


# One method per library that solves with the exact damped Hessian (or, for Kronfluence, the
# layer-wise EK-FAC, checked for sign and rank agreement only).
EXACT_METHODS = [("pydvl", "direct (hessian)", 1e-6), ("captum", "NaiveInfluenceFunction (full rank)", 1e-4),
                 ("dattri", "IF explicit", 1e-6), ("kronfluence", "ekfac", None)]


@pytest.mark.parametrize("lib,name,rtol", EXACT_METHODS)
def test_library_adapters_keep_influents_convention(tiny, lib, name, rtol):
    if importlib.util.find_spec(lib) is None:
        pytest.skip(f"{lib} not installed (see benchmarks/requirements-libs.txt)")
    p, exact = tiny
    v = adapter(lib).methods("small")[name](p)
    assert v.shape == exact.shape
    if rtol is not None:  # same curvature, same damping: the same numbers
        torch.testing.assert_close(v, exact, rtol=rtol, atol=rtol * float(exact.abs().max()))
    else:  # an approximation: same sign and scale, correlated
        assert float((v * exact).sum()) > 0
        assert torch.corrcoef(torch.stack([v.flatten(), exact.flatten()]))[0, 1] > 0.5
