"""SIGKILL a whole influence run (curvature fit, gradient storing, scoring) at seeded random points, rerun it,
and get bit-identical scores; a killed run never leaves a shard that is listed but unreadable.

The run: Arnoldi on the GGN of a small MLP, training gradients written to a store in 6 shards, then
scores, top-k and self-influence streamed back from the store (cache_bytes=0). Kill points are the N-th
call to a model, curvature or store function (tests/_crash.py); N is drawn from a seeded generator,
a third of the trials in each stage.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _crash import child, killed, tripwire  # noqa: E402

import influent as inf  # noqa: E402
from influent.store import GradientStore  # noqa: E402
from influent.testing.problems import blobs, seeded  # noqa: E402

STAGES = ("curvature", "store", "scoring")
SEED = 2026
DEFAULT_TRIALS, SLOW_TRIALS = 5, 19     # 24 in all with -m slow, plus the double crash


def run(store: str, out: str) -> None:
    """The job a user would run (and rerun after a crash): fit into a store, score from it, save the results."""
    X, y = blobs(48, 5, 3, seed=1)
    model = seeded(lambda: nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)))
    attr = inf.Attributor(model, inf.Task.classification(), curvature="ggn", damping=1e-2, batch_size=8,
                          solver=inf.solvers.Arnoldi(rank=12, iterations=24, seed=3), cache_bytes=0)
    attr.fit((X, y), store=store)
    result = {"scores": attr.score((X[:5], y[:5])).values, "top": attr.top_k((X[:5], y[:5]), 4),
              "self": attr.self_influence()}
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    torch.save(result, tmp)
    os.replace(tmp, out)


def _one_thread(fn, *args):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the child runs with one thread too: same reductions, same bits
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """One uninterrupted run in this process: the reference results and the stage of every kill point."""
    d = tmp_path_factory.mktemp("reference")
    with tripwire() as log:
        _one_thread(run, str(d / "store"), str(d / "out.pt"))
    first_store = log.index("replace")                 # the store's manifest is created after the solver fit
    first_read = log.index("load_file")                # scoring streams shards back from the store
    bounds = {"curvature": (1, first_store), "store": (first_store + 1, first_read),
              "scoring": (first_read + 1, len(log) + 1)}
    rng = random.Random(SEED)
    trials = [(stage, rng.randrange(*bounds[stage])) for _ in range(8) for stage in STAGES]  # stages in turn
    assert log[:first_store].count("matmat") >= 20 and log.count("save_file") == 6
    return torch.load(d / "out.pt"), trials


def _kill_then_resume(tmp_path, plan, trial: int) -> None:
    reference, trials = plan
    stage, kill_at = trials[trial]
    store, out = tmp_path / "store", tmp_path / "out.pt"
    result = child("test_crash_resume", "run", kill_at, store, out)
    assert killed(result), f"{stage} kill at call {kill_at} did not happen: {result.returncode} {result.stderr[-500:]}"
    assert not out.exists()
    if (store / "manifest.json").exists():           # whatever the manifest lists is complete and verified
        partial = GradientStore.open(store)
        assert sum(1 for _ in partial.blocks()) == len(partial.manifest["shards"])
        assert partial.n_rows == 8 * len(partial.manifest["shards"])
    _one_thread(run, str(store), str(out))           # the rerun resumes from the store
    again = torch.load(out)
    assert torch.equal(again["scores"], reference["scores"]), stage
    assert all(torch.equal(a, b) for a, b in zip(again["top"], reference["top"]))
    assert torch.equal(again["self"], reference["self"])


@pytest.mark.parametrize("trial", range(DEFAULT_TRIALS))
def test_kill_and_rerun(tmp_path, plan, trial):
    _kill_then_resume(tmp_path, plan, trial)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(DEFAULT_TRIALS, DEFAULT_TRIALS + SLOW_TRIALS))
def test_kill_and_rerun_more(tmp_path, plan, trial):
    _kill_then_resume(tmp_path, plan, trial)


@pytest.mark.slow
def test_kill_twice_then_resume(tmp_path, plan):
    """Two crashes in a row (inside storing, then inside the refit of the curvature) still resume to the same bits."""
    reference, trials = plan
    first = next(k for s, k in trials if s == "store")
    second = next(k for s, k in trials if s == "curvature")   # before the store is touched again: always reached
    for kill_at in (first, second):
        assert killed(child("test_crash_resume", "run", kill_at, tmp_path / "store", tmp_path / "out.pt"))
    _one_thread(run, str(tmp_path / "store"), str(tmp_path / "out.pt"))
    assert torch.equal(torch.load(tmp_path / "out.pt")["scores"], reference["scores"])
