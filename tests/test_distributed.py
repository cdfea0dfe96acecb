"""torch.distributed: 2 gloo processes on CPU give the 1-process scores (float64, ≤ 1e-10 relative).

One spawn of 2 ranks runs every case; the parent process computes the 1-process reference.
"""
import copy
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import influent as inf
from influent.compress import Dropout
from influent.distributed import shard
from influent.solvers import CG
from influent.testing.problems import blobs
from influent.train import fit_lbfgs, mlp

SIZE = 2
N_TRAIN = 23  # odd: shards of 12 and 11
K = 5
# CG stops at a relative residual: at the default 1e-8 the round-off of a different summation order moves the
# stopping point, and the two runs differ by up to ~1e-9; a 1e-12 tolerance makes both the exact solve
TIGHT_CG = CG(rtol=1e-12)
CASES = {  # name: (Attributor options, number of training examples)
    **{f"{c}-{s}": (dict(curvature=c, solver=TIGHT_CG if s == "cg" else s), N_TRAIN)
       for c in ("hessian", "ggn", "fisher", "empirical_fisher") for s in ("direct", "cg", "arnoldi")},
    "compressed-fisher-direct": (dict(curvature="fisher", compress=Dropout(k=8, level="neuron", seed=2)), N_TRAIN),
    "compressed-ggn-cg": (dict(curvature="ggn", solver=TIGHT_CG, compress=Dropout(k=8, level="neuron", seed=2)), N_TRAIN),
    "one-example": (dict(curvature="ggn", solver=TIGHT_CG), 1),  # rank 1 holds an empty shard
}
OPTIONS = dict(damping=0.05, batch_size=4)  # small batches: several blocks per shard
PER_EXAMPLE = {"ggn-direct", "ggn-cg", "ggn-arnoldi", "compressed-ggn-cg", "one-example"}  # also self-influence etc.


def _setup() -> dict:
    X, Y = blobs(N_TRAIN, 5, 3, seed=3)
    model = mlp([5, 6, 3], seed=0, dtype=torch.float64)
    fit_lbfgs(model, inf.Task.classification(), (X, Y), weight_decay=1e-2, max_iter=300)
    XQ, YQ = blobs(4, 5, 3, seed=4)
    return {"state": model.state_dict(), "X": X, "Y": Y, "XQ": XQ, "YQ": YQ}


def _model(setup: dict) -> torch.nn.Module:
    model = mlp([5, 6, 3], dtype=torch.float64)
    model.load_state_dict(setup["state"])
    return model.eval()


def _run(setup: dict, options: dict, n: int, store=None, per_example: bool = True) -> dict:
    """What a user gets back from one fitted attributor (per-example outputs cost one solve per example)."""
    ids = [f"ex{i}" for i in range(n)]
    attr = inf.Attributor(_model(setup), inf.Task.classification(), **copy.deepcopy(options), **OPTIONS)
    attr.fit((setup["X"][:n], setup["Y"][:n]), ids=ids, store=store)
    query = (setup["XQ"], setup["YQ"])
    s = attr.score(query, ids=["q0", "q1", "q2", "q3"])
    out = {"scores": s.values, "train_ids": list(s.train_ids), "query_ids": list(s.query_ids),
           "top": attr.top_k(query, K), "bottom": attr.top_k(query, K, largest=False)}
    if per_example:
        out.update(self=attr.self_influence(), summed=attr.summed_score(query), norms=attr.inverse_grad_norms())
    return out


def _error(fn) -> str:
    try:
        fn()
    except inf.InputError as e:
        return str(e)
    return ""


def _worker(rank: int, size: int, port: int, folder: str) -> None:
    import os
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        setup = torch.load(Path(folder) / "setup.pt")
        out = {name: _run(setup, options, n, per_example=name in PER_EXAMPLE) for name, (options, n) in CASES.items()}
        store = Path(folder) / "store"
        options = CASES["compressed-fisher-direct"][0]
        out["store"] = _run(setup, options, N_TRAIN, store=store, per_example=False)
        out["store-resumed"] = _run(setup, options, N_TRAIN, store=store, per_example=False)  # every rank reopens its own store
        model = _model(setup)
        out["kfac"] = _error(lambda: inf.Attributor(model, inf.Task.classification(), curvature="kfac")
                             .fit((setup["X"], setup["Y"])))
        n_mine = N_TRAIN - rank  # ranks that pass different training sets are refused
        out["mismatch"] = _error(lambda: inf.Attributor(model, inf.Task.classification())
                                 .fit((setup["X"][:n_mine], setup["Y"][:n_mine])))
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(1-process results, [results of each of the 2 ranks], folder) from one spawn."""
    folder = tmp_path_factory.mktemp("distributed")
    setup = _setup()
    torch.save(setup, folder / "setup.pt")
    mp.spawn(_worker, args=(SIZE, _free_port(), str(folder)), nprocs=SIZE, join=True)
    reference = {name: _run(setup, options, n, per_example=name in PER_EXAMPLE) for name, (options, n) in CASES.items()}
    return reference, [torch.load(folder / f"rank{r}.pt") for r in range(SIZE)], folder


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == torch.float64
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process(runs, name):
    reference, ranks, _ = runs
    want = reference[name]
    for got in (rank[name] for rank in ranks):  # every rank returns the full, merged results
        assert got["train_ids"] == want["train_ids"] and got["query_ids"] == want["query_ids"]
        for key in ("scores", "self", "summed", "norms") if name in PER_EXAMPLE else ("scores",):
            assert _rel(got[key], want[key]) <= 1e-10, (key, _rel(got[key], want[key]))
        for key in ("top", "bottom"):
            assert torch.equal(got[key][1], want[key][1])
            assert _rel(got[key][0], want[key][0]) <= 1e-10


def test_each_rank_writes_and_resumes_its_own_store(runs):
    reference, ranks, folder = runs
    stores = sorted(p.name for p in (folder / "store").iterdir())
    assert stores == [f"rank-{r:05d}-of-{SIZE:05d}" for r in range(SIZE)]
    for r, got in enumerate(ranks):
        manifest = (folder / "store" / stores[r] / "manifest.json").read_text()
        mine = [f"ex{i}" for i in shard(N_TRAIN, r, SIZE)]
        assert all(f'"{i}"' in manifest for i in mine) and f'"ex{shard(N_TRAIN, 1 - r, SIZE)[0]}"' not in manifest
        for key in ("store", "store-resumed"):
            assert _rel(got[key]["scores"], reference["compressed-fisher-direct"]["scores"]) <= 1e-10


def test_bad_input_is_refused_on_every_rank(runs):
    _, ranks, _ = runs
    for got in ranks:
        assert "kfac" in got["kfac"] and "torch.distributed" in got["kfac"]
        assert "same training set" in got["mismatch"] and "rank 1: 22" in got["mismatch"]


@pytest.mark.parametrize("n,size", [(23, 2), (10, 3), (2, 5), (0, 2), (7, 1)])
def test_shards_are_contiguous_balanced_and_cover_everything(n, size):
    parts = [shard(n, r, size) for r in range(size)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
