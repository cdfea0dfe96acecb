"""Issue 4 (c): end-to-end compressed influence on a GPT-2-small-sized causal LM, on CPU.

GPT2LMHeadModel(GPT2Config()) with random weights (no GPT-2 weights are available offline; timing and
memory only), float32, n_train sequences × n_query queries of `length` random tokens. Attributed
parameters: every Conv1D of the 12 blocks (attention c_attn / c_proj, MLP c_fc / c_proj: 85 M of the
124 M parameters; embeddings and LayerNorms excluded). Influence in the compressed space at one k:
rows C(g_i), curvature H_C = (1/n) Σ C(g_i)C(g_i)ᵀ (empirical Fisher), float64 Cholesky with damping,
scores C(g_q)ᵀ(H_C + λI)⁻¹C(g_i).

Two groups, each in its own process (peak RSS per group):
- factored: one batched forward/backward with hooks gives token factors (A [B, T, d_a], D [B, T, out])
  of every layer, shared by neuron dropout, element dropout and FactoredGaussian; none forms g_i.
- dense: per-example gradients g_i ∈ R^P (one forward/backward per sequence), then SJLT and a dense
  Gaussian projection (its P × k map regenerated tile by tile from the seed, never stored), and plain
  gradient similarity without compression. These are timed on the first `--dense-examples` sequences
  and scaled linearly to n_train + n_query (marked extrapolated); the Gaussian map is applied to the
  first P' coordinates and its time scaled by P/P'.

    python benchmarks/compression_lm.py            # writes results/compression_lm.{json,md}
    python benchmarks/compression_lm.py --quick    # tiny GPT-2 config, seconds
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, run_isolated, write  # noqa: E402

CONV1D = r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)"
FACTORED = ("neuron dropout", "element dropout", "factored gaussian")
DENSE = ("sjlt", "gaussian", "none")


def setup(opts: dict):
    """Model, function, Linear-layer plan, parameter space and token batches of the benchmark."""
    import influent as inf
    from influent.factors import plan_factors
    from influent.grads import ModelFunction
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=64, vocab_size=500) if opts["quick"] else GPT2Config()
    model = GPT2LMHeadModel(cfg).eval()
    space = inf.select_params(model, [CONV1D])
    fn = ModelFunction(model, inf.Task.language_modeling(), space)
    layers = plan_factors(model, space)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (opts["train"] + opts["queries"], opts["length"]), generator=g)
    return model, fn, layers, space, ids[: opts["train"]], ids[opts["train"]:], cfg


def make_compressor(name: str, k: int):
    from influent.compress import SJLT, Dropout, FactoredGaussian, Gaussian

    return {"neuron dropout": lambda: Dropout(k, level="neuron", seed=0),
            "element dropout": lambda: Dropout(k, level="element", seed=0),
            "factored gaussian": lambda: FactoredGaussian(k, seed=0),
            "sjlt": lambda: SJLT(k, seed=0), "gaussian": lambda: Gaussian(k, seed=0)}[name]()


def influence(train_rows: torch.Tensor, query_rows: torch.Tensor, damping: float) -> tuple[torch.Tensor, dict]:
    """Scores in the compressed space, timing the curvature (H_C and its Cholesky) and the scoring."""
    from influent.curvature import DenseOperator
    from influent.solvers import Direct

    t0 = time.perf_counter()
    R = train_rows.double()
    H = R.T @ R / R.shape[0]
    solver = Direct().fit(DenseOperator(H), damping)
    t1 = time.perf_counter()
    scores = solver.solve(query_rows.double().T).T @ R.T
    return scores, {"curvature": t1 - t0, "scoring": time.perf_counter() - t1}


def run_factored(opts: dict) -> dict:
    """One shared forward/backward per batch for the factored compressors."""
    from influent.factors import factor_batch

    _, fn, layers, space, train, query, _ = setup(opts)
    comps = {n: make_compressor(n, opts["k"]).fit(space, layers=layers) for n in FACTORED}
    rows = {n: ([], []) for n in FACTORED}
    t = {"forward_backward": 0.0, **{f"compress {n}": 0.0 for n in FACTORED}}
    for side, data in ((0, train), (1, query)):
        for start in range(0, data.shape[0], opts["batch"]):
            batch = {"input_ids": data[start: start + opts["batch"]]}
            t0 = time.perf_counter()
            factors = factor_batch(fn, layers, batch, query=bool(side), sequence=True)
            t["forward_backward"] += time.perf_counter() - t0
            for n, c in comps.items():
                t0 = time.perf_counter()
                rows[n][side].append(c.apply_factors(layers, factors))
                t[f"compress {n}"] += time.perf_counter() - t0
    out = {"P": space.numel, "methods": {}}
    for n in FACTORED:
        _, stages = influence(torch.cat(rows[n][0]), torch.cat(rows[n][1]), opts["damping"])
        stages = {"forward_backward": t["forward_backward"], "compression": t[f"compress {n}"], **stages}
        out["methods"][n] = {"k": comps[n].k_, "stages": stages, "total": sum(stages.values()),
                             "state_bytes": comps[n].state_bytes, "extrapolated": False}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def example_gradient(model, fn, space, ids: torch.Tensor, query: bool = False) -> torch.Tensor:
    """One sequence's flat gradient [1, P] by plain autograd (one forward and backward, no vmap)."""
    table = dict(model.named_parameters())
    loss = (fn.task.query_loss if query else fn.task.train_loss)(model, {"input_ids": ids[None]})[0]
    grads = torch.autograd.grad(loss, [table[n] for n in space.names])
    return space.flatten(dict(zip(space.names, grads)))[None]


def run_dense(opts: dict) -> dict:
    """Per-example gradients on a subset; SJLT, sliced dense Gaussian and no compression, scaled to n."""
    from influent.compress.base import flat_space

    model, fn, _, space, train, query, _ = setup(opts)
    m = min(opts["dense_examples"], train.shape[0])
    total = train.shape[0] + query.shape[0]
    P, k = space.numel, opts["k"]
    sub = min(P, opts["gaussian_slice"])
    sjlt, gauss = make_compressor("sjlt", k).fit(space), make_compressor("gaussian", k).fit(flat_space(sub))
    t = {"forward_backward": 0.0, "sjlt": 0.0, "gaussian": 0.0, "none": 0.0}
    q_grads = example_gradient(model, fn, space, query[0], query=True)  # one query row for the similarity timing
    for start in range(0, m, opts["dense_batch"]):
        batch = {"input_ids": train[start: start + opts["dense_batch"]]}
        t0 = time.perf_counter()
        G = torch.cat([example_gradient(model, fn, space, x) for x in batch["input_ids"]])
        t["forward_backward"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        sjlt.apply(G)
        t["sjlt"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        gauss.apply(G[:, :sub].contiguous())
        t["gaussian"] += (time.perf_counter() - t0) * P / sub
        t0 = time.perf_counter()
        G @ q_grads.T
        t["none"] += (time.perf_counter() - t0) * query.shape[0]
        del G
    scale = total / m
    # the k-space stages cost the same for any rows of this shape: time them on all n rows
    g = torch.Generator().manual_seed(2)
    _, curv = influence(torch.randn(train.shape[0], k, generator=g), torch.randn(query.shape[0], k, generator=g),
                        opts["damping"])
    out = {"P": P, "timed_examples": m, "scale": scale, "gaussian_slice": sub, "methods": {}}
    fb = t["forward_backward"] * scale
    for n in ("sjlt", "gaussian"):
        stages = {"forward_backward": fb, "compression": t[n] * scale, **curv}
        out["methods"][n] = {"k": k, "stages": stages, "total": sum(stages.values()), "extrapolated": True,
                             "state_bytes": (sjlt if n == "sjlt" else gauss).state_bytes}
    stages = {"forward_backward": fb, "compression": 0.0, "curvature": 0.0, "scoring": t["none"] * train.shape[0] / m}
    out["methods"]["none"] = {"k": P, "stages": stages, "total": sum(stages.values()), "extrapolated": True,
                              "state_bytes": 0, "note": "gradient similarity (identity curvature): a P × P "
                              "curvature cannot be formed; query gradients held in memory"}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def table(res: dict) -> str:
    o = res["options"]
    mach = res["machine"]
    lines = [f"## GPT-2-small end to end on CPU (`python benchmarks/compression_lm.py{' --quick' if o['quick'] else ''}`)",
             "",
             f"Machine: {mach['cores']} cores ({mach['cpu']}), torch {mach['torch']}, {mach['threads']} threads. "
             f"Total wall time {res['wall_seconds'] / 60:.1f} min. GPT2LMHeadModel(GPT2Config()) random init, float32, {o['train']} training × "
             f"{o['queries']} query sequences of {o['length']} random tokens; attributed parameters: all Conv1D layers "
             f"(P = {res['P']:,}); k = {o['k']}; damping {o['damping']}; empirical-Fisher curvature of the compressed "
             f"gradients, float64 Cholesky. Factored methods share one batched forward/backward (batches of {o['batch']}). "
             f"Dense methods timed on {o['dense_examples']} sequences and scaled to all {o['train'] + o['queries']} "
             f"(*extrapolated*); the dense Gaussian map is applied to P' = {o['gaussian_slice']:,} coordinates and "
             "its time scaled by P/P'. Curvature and scoring of the dense methods are timed on [n, k] rows of the "
             "same shape (their cost does not depend on the values). Peak RSS is per process group. Wall times on a shared 2-core machine.",
             "",
             "| method | k | forward+backward (s) | compression (s) | curvature (s) | scoring (s) | total (s) | "
             "vs neuron dropout | stored state | peak RSS (group) | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    base = res["methods"]["neuron dropout"]["total"] if "neuron dropout" in res["methods"] else None
    for name, m in res["methods"].items():
        s = m["stages"]
        ratio = f"{m['total'] / base:.1f}×" if base else "–"
        note = ("extrapolated" if m["extrapolated"] else "") + (f"; {m['note']}" if m.get("note") else "")
        lines.append(f"| {name} | {m['k']:,} | {s['forward_backward']:.1f} | {s['compression']:.2f} | "
                     f"{s['curvature']:.2f} | {s['scoring']:.2f} | {m['total']:.1f} | {ratio} | "
                     f"{m['state_bytes'] / 2**10:.0f} KiB | {m['peak_rss_mb']:.0f} MB | {note} |")
    lines += ["", "PCA at this k is not run: it needs a sample of ≥ k gradients of dimension P "
              f"({o['k']} × {res['P']:,} float32 = {o['k'] * res['P'] * 4 / 2**30:.0f} GiB) and a stored P × k map "
              f"({res['P'] * o['k'] * 4 / 2**30:.0f} GiB); with {o['train']} training sequences its rank is at most "
              f"{o['train']}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", choices=["factored", "dense"], help=argparse.SUPPRESS)
    ap.add_argument("--options", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dense-examples", type=int, default=16)
    ap.add_argument("--dense-batch", type=int, default=4)
    ap.add_argument("--gaussian-slice", type=int, default=2**20)
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.group:
        opts = json.loads(a.options)
        print(json.dumps(run_factored(opts) if a.group == "factored" else run_dense(opts)))
        return
    opts = {"quick": a.quick, "train": a.train, "queries": a.queries, "length": a.length, "k": a.k,
            "batch": a.batch, "dense_examples": a.dense_examples, "dense_batch": a.dense_batch,
            "gaussian_slice": a.gaussian_slice, "damping": a.damping}
    if a.quick:
        opts.update(train=16, queries=4, length=32, k=256, dense_examples=4, gaussian_slice=2**14)
    t0 = time.perf_counter()
    res = {"machine": machine(), "options": opts, "methods": {}}
    for group in ("factored", "dense"):
        out = run_isolated(__file__, ["--group", group, "--options", json.dumps(opts)], a.timeout)
        if "error" in out:
            print(f"{group}: {out['error']}", file=sys.stderr)
            continue
        res["P"] = out["P"]
        for name, m in out["methods"].items():
            res["methods"][name] = {**m, "peak_rss_mb": out["peak_rss_mb"]}
    res["wall_seconds"] = time.perf_counter() - t0
    write("compression_lm_quick" if a.quick else "compression_lm", res, table(res))


if __name__ == "__main__":
    main()
