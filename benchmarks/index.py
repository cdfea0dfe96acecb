"""Issue 9 (2): FAISS retrieval of top-k influence — recall@10 of approximate indexes vs the exact one.

(a) Synthetic: n rows of dimension 1024 (default 1,000,000) with low-rank structure, as compressed
    gradients have (rows = Z W + noise, Z [n, 64]); 100 queries from the same law.
(b) Real: the MNIST MLP 784→128→10 (trained for a few epochs of Adam on all 60,000 images), its
    training gradients compressed by neuron dropout to k = 1024, empirical-Fisher curvature; 100 test
    queries preconditioned by the Attributor and searched through `influent.index.GradientIndex`.
For each index: build time, memory of the index, query latency per query, recall@10 vs the exact
inner-product index (IndexFlatIP). HNSW is built on the first `--hnsw-rows` rows only (its build
time grows fast on 2 cores), against an exact index over the same rows.

    python benchmarks/index.py            # results/index.{json,md}
    python benchmarks/index.py --quick    # 50,000 synthetic rows
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, write  # noqa: E402


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)]))


def index_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def measure(rows: np.ndarray, queries: np.ndarray, kind: str, searches: list[dict], k: int = 10,
            mips: str = "ip", **opts) -> list[dict]:
    """Build one index over rows (with the MIPS-to-L2 reduction when mips="l2"), then search the queries
    once per entry of `searches` ({"nprobe": ..} or {"ef_search": ..}); times and result ids per search."""
    from influent.index import make_faiss_index, mips_queries, mips_rows

    t0 = time.perf_counter()
    if mips == "l2":
        max_norm = float(np.sqrt(max(np.einsum("ij,ij->i", rows[s: s + 100_000], rows[s: s + 100_000]).max()
                                     for s in range(0, rows.shape[0], 100_000))))
        prep, queries = (lambda r: mips_rows(r, max_norm)), mips_queries(queries)
    else:
        prep = (lambda r: r)
    index = make_faiss_index(queries.shape[1], kind, rows.shape[0], opts.get("nlist"), metric=mips)
    if kind == "ivf":
        pick = np.random.default_rng(0).choice(rows.shape[0], min(rows.shape[0], opts["train_rows"]), replace=False)
        index.cp.seed = 0
        index.train(prep(rows[np.sort(pick)]))
    for s in range(0, rows.shape[0], 100_000):
        index.add(prep(rows[s: s + 100_000]))
    build = time.perf_counter() - t0
    size = index_bytes(index) / 2**20
    out = []
    for search in searches:
        if "nprobe" in search:
            index.nprobe = search["nprobe"]
        if "ef_search" in search:
            index.hnsw.efSearch = search["ef_search"]
        t0 = time.perf_counter()
        _, ids = index.search(queries, k)
        latency = (time.perf_counter() - t0) / queries.shape[0]
        out.append({"kind": kind, "mips": mips if kind != "flat" else "exact", "rows": int(rows.shape[0]),
                    "build_seconds": build, "query_ms": 1e3 * latency, "index_mb": size, "ids": ids,
                    **opts, **search})
    return out


def suite(name: str, rows: np.ndarray, queries: np.ndarray, a) -> list[dict]:
    out = []
    exact = measure(rows, queries, "flat", [{}])[0]
    out.append({**exact, "recall@10": 1.0})
    sub = rows[: a.hnsw_rows]
    exact_sub = measure(sub, queries, "flat", [{}])[0]
    for mips in a.mips:
        for r in measure(rows, queries, "ivf", [{"nprobe": p} for p in a.nprobe], mips=mips, nlist=a.nlist,
                         train_rows=a.ivf_train_rows):
            out.append({**r, "recall@10": recall(r["ids"], exact["ids"])})
        for r in measure(sub, queries, "hnsw", [{"ef_search": ef} for ef in a.ef_search], mips=mips):
            out.append({**r, "recall@10": recall(r["ids"], exact_sub["ids"])})
    for r in out:
        r["set"] = name
        r.pop("ids")
        print(f"{name} {r['kind']} {r['mips']} rows={r['rows']} recall={r['recall@10']:.3f} "
              f"build={r['build_seconds']:.1f}s query={r['query_ms']:.2f}ms", flush=True)
    return out


def synthetic(n: int, dim: int, n_query: int, rank: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    W = g.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(rank)
    rows = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        b = min(100_000, n - s)
        rows[s: s + b] = g.standard_normal((b, rank), dtype=np.float32) @ W + \
            0.3 * g.standard_normal((b, dim), dtype=np.float32)
    q = g.standard_normal((n_query, rank), dtype=np.float32) @ W + 0.3 * g.standard_normal((n_query, dim), dtype=np.float32)
    return rows, q


def mnist_rows(k: int, n_query: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Compressed training rows and preconditioned test queries of an MNIST MLP, via the Attributor."""
    import influent as inf
    from influent.data import load_mnist
    from influent.index import GradientIndex
    from influent.train import mlp

    X, y = load_mnist("train")
    Xt, yt = load_mnist("test")
    X, Xt = X.flatten(1), Xt.flatten(1)
    model, task = mlp([784, 128, 10], seed=0), inf.Task.classification()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(3):
        for idx in torch.randperm(X.shape[0], generator=g).split(256):
            opt.zero_grad()
            task.train_loss(model, (X[idx], y[idx])).mean().backward()
            opt.step()
    train_s = time.perf_counter() - t0
    acc = float((model(Xt).argmax(1) == yt).float().mean())
    attr = inf.Attributor(model, task, curvature="empirical_fisher", damping=1e-3,
                          compress=inf.compress.Dropout(k, level="neuron", seed=0)).fit((X, y))
    PQ, _ = attr.preconditioned_queries((Xt[:n_query], yt[:n_query]))
    rows = torch.cat([r for _, r in attr.training_rows()])
    # the index path end to end once, to check it agrees with the raw FAISS runs below
    _, ids = GradientIndex.build(attr, "flat").search(attr, (Xt[:n_query], yt[:n_query]), k=10)
    info = {"train_seconds": train_s, "test_accuracy": acc, "fit_seconds": attr.timings_.get("fit_total"),
            "k": attr.compressor_.k_, "n_train": int(X.shape[0])}
    return rows.float().numpy(), PQ.float().numpy(), info


def table(res: dict) -> str:
    o = res["options"]
    flags = "".join(f" --{k.replace('_', '-')}" for k in ("quick", "mnist_only") if o.get(k))
    lines = [f"## FAISS retrieval (`python benchmarks/index.py{flags}`, nprobe {o['nprobe']}, efSearch {o['ef_search']})", "",
             f"{res['options'].get('threads', 2)} thread(s) of a 2-core machine, faiss {res['faiss']}, float32. Recall@10 against the exact inner-product index over "
             "the same rows (HNSW on its first rows only, see `rows`). Synthetic rows: low-rank (64) + noise, "
             f"dimension {o['dim']}. MNIST: {res['mnist'].get('n_train', '–')} training gradients compressed to "
             f"k = {res['mnist'].get('k', '–')} (neuron dropout), 100 preconditioned test queries "
             f"(model test accuracy {res['mnist'].get('test_accuracy', float('nan')):.3f}). "
             f"Total {res['wall_seconds'] / 60:.1f} min, peak RSS {res['peak_rss_mb']:.0f} MB.", "",
             "`search`: ip = FAISS's inner-product index on the raw rows; l2 = the MIPS-to-L2 reduction "
             "(rows [x, √(M² − ‖x‖²)], queries [q, 0]; influent.index's default for approximate kinds).", "",
             "| rows | index | search | rows indexed | options | build (s) | index size (MB) | query (ms) | recall@10 |",
             "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for r in res["results"]:
        opts = f"nlist={r['nlist']}, nprobe={r['nprobe']}" if r["kind"] == "ivf" else \
            (f"M=32, efSearch={r['ef_search']}" if r["kind"] == "hnsw" else "exact")
        lines.append(f"| {r['set']} | {r['kind']} | {r.get('mips', 'ip')} | {r['rows']:,} | {opts} | {r['build_seconds']:.1f} | "
                     f"{r['index_mb']:.0f} | {r['query_ms']:.2f} | {r['recall@10']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--ivf-train-rows", type=int, default=50_000)
    ap.add_argument("--hnsw-rows", type=int, default=100_000)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--skip-mnist", action="store_true")
    ap.add_argument("--mnist-only", action="store_true", help="only the MNIST gradients (writes results/index_mnist)")
    ap.add_argument("--mips", nargs="+", default=["l2", "ip"], choices=["l2", "ip"],
                    help="approximate indexes on the MIPS-to-L2 reduction (l2) and/or raw inner products (ip)")
    ap.add_argument("--threads", type=int, default=2, help="torch and FAISS (OpenMP) threads")
    a = ap.parse_args()
    if a.quick:
        a.rows, a.nlist, a.hnsw_rows, a.ivf_train_rows = 50_000, 128, 20_000, 20_000
    import faiss

    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    t0 = time.perf_counter()
    results = []
    if not a.mnist_only:
        rows, q = synthetic(a.rows, a.dim, 100)
        results = suite("synthetic", rows, q, a)
        del rows
    mnist = {}
    if not a.skip_mnist:
        m_rows, m_q, mnist = mnist_rows(1024, 100)
        b = argparse.Namespace(**{**vars(a), "nlist": min(a.nlist, 256), "hnsw_rows": m_rows.shape[0]})
        results += suite("MNIST gradients", m_rows, m_q, b)
    res = {"machine": machine(), "faiss": faiss.__version__, "options": vars(a), "results": results,
           "mnist": mnist, "peak_rss_mb": peak_rss_mb(), "wall_seconds": time.perf_counter() - t0}
    write("index_quick" if a.quick else ("index_mnist" if a.mnist_only else "index"), res, table(res))


if __name__ == "__main__":
    main()
