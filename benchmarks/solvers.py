"""Every curvature × solver on (a) the digits MLP and (b) a 1.1M-parameter MLP: time, peak RSS, accuracy.

(a) sklearn digits, MLP 64→32→10 tanh, float64, weight decay 1e-3 (damping 1e-3), trained to
    ‖∇R‖ < 1e-8 with L-BFGS; 1000 train × 100 queries; Spearman against exact Hessian + direct.
(b) MLP 64→1024→1024→10 tanh, float32, 1000 × 100 digits: wall time and peak RSS only.

Each configuration runs in its own process so its peak RSS is its own. Writes
benchmarks/results/solvers.json and solvers.md.   Usage: python benchmarks/solvers.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, peak_rss_mb, rss_mb, run_isolated, spearman_rows, write  # noqa: E402

DIGITS_CONFIGS = (
    [f"{c}:direct" for c in ("hessian", "ggn", "fisher", "empirical_fisher", "kfac", "ekfac")]
    + [f"{c}:{s}" for s in ("cg", "lissa", "arnoldi") for c in ("hessian", "ggn", "fisher", "empirical_fisher", "kfac", "ekfac")]
    + ["identity:identity"]
)
MLP1M_CONFIGS = ["ekfac:direct", "kfac:direct", "hessian:arnoldi", "ggn:arnoldi", "identity:identity"]
# Iterative solvers get a fixed budget on the exact curvatures (H + λI has κ ≈ 1e5 on digits, so
# convergence to rtol would take thousands of full-data products); info columns show where they stopped.
SOLVER_OPTIONS = {"digits": {"arnoldi": dict(rank=100, iterations=200), "cg": dict(rtol=1e-6, max_iter=300),
                             "lissa": dict(depth=1000)},
                  "mlp1m": {"arnoldi": dict(rank=50, iterations=80)}}
SOLVER_CLASSES = {"arnoldi": "Arnoldi", "cg": "CG", "lissa": "LiSSA"}


def warm_up() -> None:
    """One tiny fit + score, so one-time imports (torch.func pulls in torch._dynamo) are not timed."""
    import torch

    import influent as inf

    m = torch.nn.Linear(2, 2).eval()
    inf.Attributor(m, inf.Task.classification()).fit((torch.randn(3, 2), torch.tensor([0, 1, 0]))).score(
        (torch.randn(1, 2), torch.tensor([1])))


def build(task_name: str, cache: Path):
    """The trained model and data for a task, trained once and cached in `cache`."""
    import torch

    import influent as inf
    from influent.data import load_digits, split
    from influent.train import fit_lbfgs, mlp

    dtype = torch.float64 if task_name == "digits" else torch.float32
    X, y = load_digits(dtype)
    Xtr, ytr, Xq, yq = split(X, y, 1000, 100, seed=0)
    sizes = [64, 32, 10] if task_name == "digits" else [64, 1024, 1024, 10]
    model = mlp(sizes, dtype=dtype, seed=0)
    path = cache / f"{task_name}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path))
    elif task_name == "digits":
        fit_lbfgs(model, inf.Task.classification(), (Xtr, ytr), weight_decay=1e-3, max_iter=5000, tol=1e-8)
        torch.save(model.state_dict(), path)
    else:
        torch.save(model.state_dict(), path)  # timing only: random initialisation
    return model.eval(), (Xtr, ytr), (Xq, yq)


def run_one(task_name: str, config: str, cache: Path, out: Path) -> dict:
    import torch

    import influent as inf

    torch.set_num_threads(2)
    model, train, query = build(task_name, cache)
    curvature, solver_name = config.split(":")
    opts = SOLVER_OPTIONS[task_name].get(solver_name)
    solver = getattr(inf.solvers, SOLVER_CLASSES[solver_name])(**opts) if opts else solver_name
    warm_up()
    base = rss_mb()
    t0 = time.perf_counter()
    attr = inf.Attributor(model, inf.Task.classification(), curvature=curvature, solver=solver, damping=1e-3).fit(train)
    t_fit = time.perf_counter() - t0
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a budgeted CG/LiSSA warns that it stopped early; info says so
        values = attr.score(query).values
    seconds = time.perf_counter() - t0
    np.save(out, values.double().numpy())
    return {"seconds": seconds, "fit_seconds": t_fit, "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": base,
            "delta_rss_mb": peak_rss_mb() - base, "n_params": attr.space_.numel,
            "solver_info": {k: v for k, v in attr.solver_.info_.items() if isinstance(v, (int, float, str))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--one", nargs=4, metavar=("TASK", "CONFIG", "CACHE", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="only the headline configurations")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--solvers", default="", help="comma-separated solvers to re-measure; the other rows of "
                    "solvers.json are kept (hessian:direct always reruns: it is the reference)")
    args = ap.parse_args()
    if args.one:
        task, config, cache, out = args.one
        print(json.dumps(run_one(task, config, Path(cache), Path(out))))
        return
    cache = Path(tempfile.mkdtemp(prefix="influent-bench-"))
    build("digits", cache), build("mlp1m", cache)  # train once, outside the timed runs
    command = "python benchmarks/solvers.py " + " ".join(sys.argv[1:])
    results: dict = {"machine": machine(), "digits": {}, "mlp1m": {}, "commands": [command]}
    digits = ["hessian:direct", "ekfac:direct", "hessian:lissa", "identity:identity"] if args.quick else DIGITS_CONFIGS
    wanted = set(filter(None, args.solvers.split(",")))
    if wanted:  # update the earlier results in place
        earlier = json.loads((RESULTS / "solvers.json").read_text())
        results = {**earlier, "commands": earlier.get("commands", ["python benchmarks/solvers.py"]) + [command]}
    for task, configs in (("digits", digits), ("mlp1m", MLP1M_CONFIGS)):
        for config in configs:
            if wanted and config.split(":")[1] not in wanted and config != "hessian:direct":
                continue
            out = cache / f"{task}-{config.replace(':', '-')}.npy"
            res = run_isolated(__file__, ["--one", task, config, str(cache), str(out)], args.timeout)
            if task == "digits" and "error" not in res:
                exact = np.load(cache / "digits-hessian-direct.npy")
                res["spearman"], res["spearman_flat"] = spearman_rows(np.load(out), exact)
            results[task][config] = res
            print(task, config, {k: v for k, v in res.items() if k != "solver_info"}, flush=True)
    write("solvers", results, table(results))


def table(results: dict) -> str:
    commands = results.get("commands", ["python benchmarks/solvers.py"])
    lines = ["## Solvers × curvatures (" + " then ".join(f"`{c}`" for c in commands) + ")", "",
             f"Machine: {results['machine']['cores']} cores, torch {results['machine']['torch']}, "
             f"{results['machine']['threads']} threads. Time = fit + full score matrix (after a warm-up call that "
             "pays one-time imports); memory = peak RSS of the run's process. CG runs at most 300 iterations and "
             "LiSSA 1000 steps (scale chosen by power iteration) on the exact curvatures; CG is block CG (all query "
             "columns share one Krylov space) unless its info says otherwise.", "",
             "### (a) digits MLP 64→32→10 (2,410 params), float64, 1000 train × 100 queries", "",
             "| curvature | solver | seconds | peak RSS MB | Spearman vs exact (mean per query) | flattened | solver info |",
             "|---|---|---:|---:|---:|---:|---|"]
    for config, r in results["digits"].items():
        c, s = config.split(":")
        if "error" in r:
            lines.append(f"| {c} | {s} | – | – | – | – | {r['error']} |")
            continue
        info = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["solver_info"].items()
                         if k in ("iterations", "matvecs", "scale", "residual", "rank", "method", "converged"))
        lines.append(f"| {c} | {s} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['spearman']:.3f} | "
                     f"{r['spearman_flat']:.3f} | {info} |")
    lines += ["", "### (b) MLP 64→1024→1024→10 (1,126,410 params), float32, 1000 train × 100 queries", "",
              "| curvature | solver | seconds | peak RSS MB | RSS above baseline MB |", "|---|---|---:|---:|---:|"]
    for config, r in results["mlp1m"].items():
        c, s = config.split(":")
        if "error" in r:
            lines.append(f"| {c} | {s} | – | – | {r['error']} |")
        else:
            lines.append(f"| {c} | {s} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['delta_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
