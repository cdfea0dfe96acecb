"""Smart sampling of the curvature data, judged by class removal (PAPERS.md §3, issue 6).

For each data set (MNIST, Fashion-MNIST) and model (MLP 784-128-10 tanh, 101,770 parameters; a
small CNN, conv 8@5×5/2 - conv 16@5×5/2 - 256-32-10 ReLU, 11,978 parameters), float32, trained by
full-batch L-BFGS on mean CE + (wd/2)‖θ‖² (wd = 1e-3) from a seeded initialisation on a seeded
subset of the training split (--n-train; a disjoint --n-val examples of the training split are the
validation split; the test split is the full 10,000), each selected class is removed by one Newton
step θ' = θ̂ − (H_S + λI)⁻¹ ∇R_rem(θ̂) (influent.apps.class_removal.remove_class) with

- curvature EK-FAC (GGN-based, deterministic) and its exact structured inverse (solver "direct"),
  λ = wd: an EK-FAC fit is two passes over S, which makes a Newton step on a 100k-parameter
  model affordable on 2 shared CPU cores (CG/LiSSA on the exact GGN needs hundreds of products);
- S drawn from the remaining training data by Random / FeatureBased (K = 10) / LogitBased
  (5 confidence bins) at budgets {1, 5, 10} % of the remaining set and seeds 0..S−1; at 100 % every
  sampler returns the whole set, so that cell is computed once per class and shared;
- the F1 of the pure step (scale 1) and of the step scaled by the best validation F1 over
  influent.apps.class_removal.DEFAULT_SCALES (never the test split), both from the same Δ.

Retraining from scratch without the class (same initialisation and optimiser) is the reference.
The Newton step assumes the original model sits at a minimum: train it long enough (--iters). The
MNIST CNN needs about 1,000 L-BFGS iterations (‖∇R‖ ≈ 4e-3); stopped at 200 (‖∇R‖ 2–4e-2) its pure
Newton step fell 0.013 short of retraining. The Fashion-MNIST CNN is still at ‖∇R‖ 0.18 after 1,000
(0.45 after 200, where its pure step falls 0.51 short).
Time and peak memory (resident-set high-water mark above the starting level, reset per run) cover
the whole Newton removal: sampling, remaining-data gradient, curvature, solve and scale search.
Wall times are measured on a shared, contended 2-core machine. Writes benchmarks/results/
sampling.{json,md,png}. Usage: python benchmarks/sampling.py [--quick] [options, see --help].
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write  # noqa: E402

import influent  # noqa: E402
from influent import Task  # noqa: E402
from influent.apps.class_removal import (f1_score, measure, remove_class, removal_accuracy,  # noqa: E402
                                         with_weights)
from influent.data import IDX_SETS, load_fashion_mnist, load_mnist  # noqa: E402
from influent.params import param_tensors  # noqa: E402
from influent.sampling import FeatureBased, LogitBased, Random  # noqa: E402
from influent.train import fit_lbfgs  # noqa: E402

WD = 1e-3
SAMPLERS = {"random": lambda n: Random(n), "feature": lambda n: FeatureBased(n, clusters=10),
            "logit": lambda n: LogitBased(n, bins=5, by="confidence")}
LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}


def return_freed_memory() -> None:
    """Make glibc return every large block (≥ 64 kB) to the OS at free: the RSS high-water mark then tracks
    live memory, so per-run peaks measured in one process are not hidden by memory cached from earlier runs."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD (also stops its dynamic growth)
    except OSError:
        pass


def build(name: str, seed: int = 0) -> nn.Module:
    """The benchmark models, seeded, float32."""
    torch.manual_seed(seed)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.Tanh(), nn.Linear(128, 10))
    return nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))


def trainer(name: str, iters: int):
    """retrain(data) -> model: the benchmark's training procedure from scratch (seed-0 init, L-BFGS)."""
    def train(data):
        model = build(name, 0)
        gnorm = fit_lbfgs(model, Task.classification(), tuple(data), weight_decay=WD, max_iter=iters, tol=1e-6)
        model.final_grad_norm = gnorm
        return model.eval()
    return train


def load(dataset: str, n_train: int, n_val: int, seed: int = 0):
    """(train, val, test) tensors: disjoint seeded subsets of the training split, and the whole test split."""
    X, y = LOADERS[dataset]("train")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    tr, va = perm[:n_train], perm[n_train:n_train + n_val]
    Xt, yt = LOADERS[dataset]("test")
    return (X[tr], y[tr]), (X[va], y[va]), (Xt, yt)


def interval(xs: list[float]) -> tuple[float, float, float]:
    """(mean, sd, half-width of the 95 % t-interval)."""
    from scipy.stats import t

    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, 0.0, float("nan")
    sd = statistics.stdev(xs)
    return m, sd, float(t.ppf(0.975, len(xs) - 1) * sd / math.sqrt(len(xs)))


def one_removal(model, train, val, test, label, sampler, seed, retrain=None) -> dict:
    """One Newton removal (pure and validation-scaled F1 from the same Δ), optionally with retraining."""
    task = Task.classification()
    res = remove_class(model, task, train, test, label, weight_decay=WD, curvature="ekfac", solver="direct",
                       sampler=sampler, validation=val, retrain=retrain, seed=seed)
    from influent.params import select_params
    space = select_params(model)
    theta = space.flatten(param_tensors(model, space))
    a_f, a_r = removal_accuracy(with_weights(model, space, theta - res.delta), task, test, label)
    d = res.newton.details
    row = {"label": label, "seed": seed, "n_curvature": d["curvature_n"], "n_remaining": d["n_remaining"],
           "pure": {"a_f": a_f, "a_r": a_r, "f1": f1_score(a_f, a_r)},
           "scaled": {"a_f": res.newton.a_f, "a_r": res.newton.a_r, "f1": res.newton.f1, "scale": d["scale"]},
           "seconds": res.newton.seconds, "peak_mb": res.newton.peak_mb, "step_norm": d["step_norm"]}
    if res.retrain is not None:
        row["retrain"] = {k: getattr(res.retrain, k) for k in ("a_f", "a_r", "f1", "seconds", "peak_mb")}
        row["retrain"]["final_grad_norm"] = float(getattr(res.retrained_model, "final_grad_norm", float("nan")))
    return row


def run_block(dataset: str, model_name: str, args, log) -> dict:
    """Train the original, then every (class, sampler, budget, seed) cell and the 100 % / retrain cell per class."""
    train, val, test = load(dataset, args.n_train, args.n_val)
    t0 = time.perf_counter()
    model = trainer(model_name, args.iters)(train)
    train_s = time.perf_counter() - t0
    a = (model(test[0][:5000]).argmax(1) == test[1][:5000]).float().mean().item()
    log(f"{dataset}/{model_name}: trained in {train_s:.0f} s, |grad| {model.final_grad_norm:.1e}, test acc {a:.4f}")
    n_params = sum(p.numel() for p in model.parameters())
    classes = args.cnn_classes if model_name == "cnn" else args.classes
    seeds = args.cnn_seeds if model_name == "cnn" else args.seeds
    full, cells = [], []
    for c in classes:
        if args.seed_start == 0:  # the 100 % cell and the retraining do not depend on the seed: run them once
            row = one_removal(model, train, val, test, c, None, 0, retrain=trainer(model_name, args.iters))
            full.append(row)
            log(f"  class {c}: 100 % F1 pure {row['pure']['f1']:.4f} scaled {row['scaled']['f1']:.4f} "
                f"(scale {row['scaled']['scale']}) retrain {row['retrain']['f1']:.4f} | "
                f"{row['seconds']:.1f} s vs {row['retrain']['seconds']:.1f} s")
            n_remaining = row["n_remaining"]
        else:
            n_remaining = int((train[1] != c).sum())
        for frac in args.budgets:
            n = max(1, round(frac / 100 * n_remaining))
            for name in SAMPLERS:
                for s in range(args.seed_start, args.seed_start + seeds):
                    r = one_removal(model, train, val, test, c, SAMPLERS[name](n), s)
                    cells.append({"sampler": name, "budget_pct": frac, **r})
            summ = {name: statistics.fmean(x["pure"]["f1"] for x in cells if x["sampler"] == name
                                           and x["budget_pct"] == frac and x["label"] == c) for name in SAMPLERS}
            log(f"    {frac:g} %: " + ", ".join(f"{k} {v:.4f}" for k, v in summ.items()))
    return {"dataset": dataset, "model": model_name, "n_params": n_params, "classes": classes, "seeds": seeds,
            "iters": args.iters,
            "original": {"train_seconds": train_s, "final_grad_norm": model.final_grad_norm, "test_acc_5000": a},
            "full": full, "cells": cells}


# ----- summaries -------------------------------------------------------------------------------
def summarise(block: dict, budgets: list[float]) -> dict:
    """Mean, sd, 95 % interval per (sampler, budget) for F1 (pure and scaled), time and memory; paired Δ vs random."""
    out: dict = {"cells": {}, "vs_random": {}}
    stat = lambda rows, f: dict(zip(("mean", "sd", "ci95"), interval([f(r) for r in rows])))
    for name in SAMPLERS:
        for b in budgets:
            rows = [r for r in block["cells"] if r["sampler"] == name and r["budget_pct"] == b]
            out["cells"][f"{name}@{b:g}"] = {"n_runs": len(rows), "f1_pure": stat(rows, lambda r: r["pure"]["f1"]),
                                            "f1_scaled": stat(rows, lambda r: r["scaled"]["f1"]),
                                            "a_f_pure": stat(rows, lambda r: r["pure"]["a_f"]),
                                            "seconds": stat(rows, lambda r: r["seconds"]),
                                            "peak_mb": stat(rows, lambda r: r["peak_mb"])}
    rows = block["full"]
    out["cells"]["all@100"] = {"n_runs": len(rows), "f1_pure": stat(rows, lambda r: r["pure"]["f1"]),
                               "f1_scaled": stat(rows, lambda r: r["scaled"]["f1"]),
                               "a_f_pure": stat(rows, lambda r: r["pure"]["a_f"]),
                               "seconds": stat(rows, lambda r: r["seconds"]),
                               "peak_mb": stat(rows, lambda r: r["peak_mb"])}
    out["retrain"] = {"f1": stat(rows, lambda r: r["retrain"]["f1"]), "a_f": stat(rows, lambda r: r["retrain"]["a_f"]),
                      "seconds": stat(rows, lambda r: r["retrain"]["seconds"]),
                      "peak_mb": stat(rows, lambda r: r["retrain"]["peak_mb"])}
    out["gap_100"] = {k: stat(rows, lambda r, k=k: r["retrain"]["f1"] - r[k]["f1"]) for k in ("pure", "scaled")}
    key = lambda r: (r["label"], r["seed"])
    for name in ("feature", "logit"):
        for b in budgets:
            for kind in ("pure", "scaled"):
                rnd = {key(r): r for r in block["cells"] if r["sampler"] == "random" and r["budget_pct"] == b}
                oth = {key(r): r for r in block["cells"] if r["sampler"] == name and r["budget_pct"] == b}
                common = sorted(set(rnd) & set(oth))
                if not common:
                    continue
                d = [oth[k][kind]["f1"] - rnd[k][kind]["f1"] for k in common]
                out["vs_random"][f"{name}@{b:g}/{kind}"] = {
                    "f1_diff": dict(zip(("mean", "sd", "ci95"), interval(d))),
                    "time_ratio": statistics.fmean(oth[k]["seconds"] for k in common)
                    / statistics.fmean(rnd[k]["seconds"] for k in common),
                    "mem_ratio": statistics.fmean(oth[k]["peak_mb"] for k in common)
                    / max(1e-9, statistics.fmean(rnd[k]["peak_mb"] for k in common))}
    out["matching"] = matching(out["cells"], budgets)
    return out


def combine(blocks: list[dict], budgets: list[float]) -> list[dict]:
    """Blocks of the same (data set, model) from separate runs (e.g. different classes) merged into one."""
    out: dict = {}
    for b in blocks:
        key = (b["dataset"], b["model"])
        b = {**b, "iters": b.get("iters", 200)}  # runs saved before iterations were recorded used 200
        if key in out and out[key]["iters"] != b["iters"]:
            raise SystemExit(f"{key}: cannot merge runs of differently trained models "
                             f"({out[key]['iters']} and {b['iters']} L-BFGS iterations)")
        if key not in out:
            out[key] = {**b, "classes": list(b["classes"]), "full": list(b["full"]), "cells": list(b["cells"]),
                        "original": [b["original"]]}
        else:
            m = out[key]
            m["classes"] = list(dict.fromkeys(m["classes"] + b["classes"]))  # runs split by class or by seed
            m["full"] += b["full"]
            m["cells"] += b["cells"]
            m["original"].append(b["original"])
    for m in out.values():
        m["seeds"] = min(len({c["seed"] for c in m["cells"] if c["label"] == k}) for k in m["classes"])
        m["original"] = m["original"][0] if len(m["original"]) == 1 else m["original"]
        m["summary"] = summarise(m, budgets)
    return list(out.values())


def merged_plan(plan: str) -> str:
    """A run's plan with what varies between merged runs (classes, seeds, iterations) left to the blocks."""
    plan = re.sub(r"MLP classes .*?; CNN classes .*? seeds\. ", "removed classes and seeds per block below. ", plan)
    plan = plan.replace("(shared by all samplers). removed", "(shared by all samplers); removed")
    return re.sub(r"L-BFGS \d+ iterations for training and retraining\.",
                  "L-BFGS for training and retraining (iterations per block).", plan)


def matching(cells: dict, budgets: list[float]) -> list[dict]:
    """For each random budget b_r: the smallest budget b_s < b_r where a smart sampler's mean pure F1 ≥ random's at b_r."""
    found = []
    for b_r in budgets:
        target = cells[f"random@{b_r:g}"]["f1_pure"]["mean"]
        for name in ("feature", "logit"):
            for b_s in budgets:
                if b_s >= b_r:
                    break
                c = cells[f"{name}@{b_s:g}"]
                if c["f1_pure"]["mean"] >= target:
                    r = cells[f"random@{b_r:g}"]
                    found.append({"sampler": name, "budget": b_s, "random_budget": b_r,
                                  "time_saving": 1 - c["seconds"]["mean"] / r["seconds"]["mean"],
                                  "memory_saving": 1 - c["peak_mb"]["mean"] / max(1e-9, r["peak_mb"]["mean"])})
                    break
    return found


def fmt(s: dict, nd: int = 4) -> str:
    return f"{s['mean']:.{nd}f} ± {s['ci95']:.{nd}f}" if not math.isnan(s["ci95"]) else f"{s['mean']:.{nd}f}"


def _originals(blk: dict) -> list[dict]:
    return blk["original"] if isinstance(blk["original"], list) else [blk["original"]]


def grad_norms(blk: dict) -> str:
    """The original model's final ‖∇R‖ over the runs merged into a block (the same seeded training each time)."""
    return ", ".join(sorted({f"{r['final_grad_norm']:.1e}" for r in _originals(blk)}))


def original_line(blk: dict) -> str:
    """How well the original model was trained: the Newton step assumes it sits at a minimum."""
    runs = _originals(blk)
    acc = sorted({f"{r['test_acc_5000']:.4f}" for r in runs})
    return (f"Original model: ‖∇R‖ {grad_norms(blk)} after training, test accuracy (first 5,000) {', '.join(acc)}"
            + (f" ({len(runs)} runs of the same seeded training)" if len(runs) > 1 else "")
            + (" — not a minimum, so the pure Newton step's premise fails here (remove_class warns)"
               if max(r["final_grad_norm"] for r in runs) > 0.1 else "") + ".\n")


def markdown(payload: dict) -> str:
    lines = ["# Smart sampling of the curvature data: class removal by one Newton step", "",
             f"Command: `{payload['command']}`. {payload['plan']}", "",
             "F1 = 2(1−a_f)·a_r/((1−a_f)+a_r) on the test split; mean ± 95 % t-interval half-width over "
             "(class, seed) runs. *Pure*: the Newton step itself; *scaled*: step scale chosen on the validation "
             "split. Time and peak memory (RSS high-water above the start, MB) cover the whole removal; "
             "wall times on a shared, contended 2-core CPU.", ""]
    for blk in payload["blocks"]:
        S = blk["summary"]
        rt = S["retrain"]
        lines += [f"## {blk['dataset']} / {blk['model']} ({blk['n_params']:,} parameters; classes {blk['classes']}, "
                  f"{blk['seeds']} seeds; L-BFGS {blk['iters']} iterations)", "",
                  original_line(blk),
                  f"Retraining from scratch: F1 {fmt(rt['f1'])}, a_f {fmt(rt['a_f'])}, {fmt(rt['seconds'], 1)} s, "
                  f"{fmt(rt['peak_mb'], 1)} MB. Gap retrain − Newton at 100 %: pure {fmt(S['gap_100']['pure'])}, "
                  f"scaled {fmt(S['gap_100']['scaled'])}.", "",
                  "| sampler | budget | runs | F1 pure | F1 scaled | a_f pure | time (s) | peak MB |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, c in S["cells"].items():
            name, b = key.split("@")
            lines.append(f"| {name} | {b} % | {c['n_runs']} | {fmt(c['f1_pure'])} | {fmt(c['f1_scaled'])} | "
                         f"{fmt(c['a_f_pure'])} | {fmt(c['seconds'], 2)} | {fmt(c['peak_mb'], 1)} |")
        lines += ["", "Paired against random at the same budget (same class and seed):", "",
                  "| sampler @ budget / step | ΔF1 (95 % CI) | time ratio | memory ratio |", "|---|---|---|---|"]
        for key, v in S["vs_random"].items():
            lines.append(f"| {key} | {fmt(v['f1_diff'])} | {v['time_ratio']:.2f} | {v['mem_ratio']:.2f} |")
        if S["matching"]:
            lines += ["", "Smaller smart budgets reaching random's mean pure F1: " + "; ".join(
                f"{m['sampler']} at {m['budget']:g} % ≥ random at {m['random_budget']:g} % "
                f"(time −{100 * m['time_saving']:.0f} %, memory −{100 * m['memory_saving']:.0f} %)"
                for m in S["matching"])]
        lines.append("")
    lines += ["## Verdict", ""] + [f"- {v}" for v in payload["verdict"]]
    return "\n".join(lines) + "\n"


def verdict(payload: dict) -> list[str]:
    out = []
    for blk in payload["blocks"]:
        S, tag = blk["summary"], f"{blk['dataset']}/{blk['model']}"
        g = S["gap_100"]["pure"]
        out.append(f"{tag}: at 100 % the pure Newton step's F1 is {S['cells']['all@100']['f1_pure']['mean']:.4f} vs "
                   f"retraining {S['retrain']['f1']['mean']:.4f} (gap {fmt(g)}; target ≤ 0.01: "
                   f"{'met' if g['mean'] <= 0.01 else 'missed'}; original model ‖∇R‖ {grad_norms(blk)} after "
                   f"{blk['iters']} L-BFGS iterations).")
        pure = {k: v for k, v in S["vs_random"].items() if k.endswith("/pure")}
        base = {k: S["cells"][f"random@{k.split('@')[1].split('/')[0]}"]["f1_pure"]["mean"] for k in pure}
        better = {k: 100 * v["f1_diff"]["mean"] / base[k] for k, v in pure.items()
                  if v["f1_diff"]["mean"] - v["f1_diff"]["ci95"] > 0}
        worse = [k for k, v in pure.items() if v["f1_diff"]["mean"] + v["f1_diff"]["ci95"] < 0]
        cheap = [m for m in S["matching"] if m["time_saving"] >= 0.30 and m["memory_saving"] >= 0.40]
        word = ("reproduces" if cheap or any(g >= 2.5 for g in better.values())
                else "reproduces in direction only (gain far below +2.5 %)" if better else "does not reproduce")
        out.append(f"{tag}: paper's claim {word} — significantly higher pure F1 than random at the same budget "
                   f"(relative gain, paper +2.5 %): {({k: round(g, 3) for k, g in better.items()}) or 'none'}; "
                   f"significantly lower: {worse or 'none'}; ≥30 % less time and ≥40 % less memory at random's "
                   f"F1: {[(m['sampler'], m['budget'], m['random_budget']) for m in cheap] or 'none'} "
                   f"({len(pure)} comparisons at 95 %, not corrected for multiplicity).")
    return out


def plot(payload: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = payload["blocks"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 3.6), squeeze=False)
    for ax, blk in zip(axes[0], blocks):
        S = blk["summary"]
        for i, name in enumerate(SAMPLERS):
            bs = payload["budgets"] + [100]
            cs = [S["cells"][f"{name}@{b:g}"] for b in payload["budgets"]] + [S["cells"]["all@100"]]
            x = np.array(bs) * (1 + 0.04 * (i - 1))
            ax.errorbar(x, [c["f1_pure"]["mean"] for c in cs], yerr=[np.nan_to_num(c["f1_pure"]["ci95"]) for c in cs],
                        marker="o", capsize=3, label=name)
        rt = S["retrain"]["f1"]
        ax.axhline(rt["mean"], color="k", ls="--", lw=1, label="retrain")
        ax.set_xscale("log")
        ax.set_xlabel("curvature budget (% of remaining training data)")
        ax.set_ylabel("F1 (pure Newton step)")
        ax.set_title(f"{blk['dataset']} / {blk['model']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


SPREAD_BUDGETS = (32, 64, 128, 256, 512)


def spread(seeds: int, log) -> dict:
    """S1: how far the sampled Newton direction is from the full-data one (digits MLP 64-32-10 tanh, float64,
    1,000 train, wd 1e-3, class 0 removed; exact GGN on S, CG to 1e-10): relative error and cosine."""
    from influent.apps.class_removal import newton_direction, split_class
    from influent.data import load_digits, split
    from influent.inputs import as_examples
    from influent.solvers import CG
    from influent.train import mlp

    X, y = load_digits(torch.float64)
    Xtr, ytr, _, _ = split(X, y, 1000, 100, seed=0)
    task = Task.classification()
    model = mlp([64, 32, 10], dtype=torch.float64, seed=0)
    gnorm = fit_lbfgs(model, task, (Xtr, ytr), weight_decay=WD, max_iter=3000, tol=1e-10)
    ex = as_examples((Xtr, ytr))
    remaining = ex.subset(split_class(ex, 0)[1])
    kw = dict(weight_decay=WD, damping=WD, curvature="ggn", batch_size=512)
    _, ref, _ = newton_direction(model, task, remaining, solver=CG(rtol=1e-10), sampler=None, seed=0, **kw)
    rows = []
    for m in SPREAD_BUDGETS:
        for name in SAMPLERS:
            for s in range(seeds):
                with measure() as cost:
                    _, d, info = newton_direction(model, task, remaining, solver=CG(rtol=1e-10), sampler=SAMPLERS[name](m),
                                                  seed=s, **kw)
                rows.append({"m": m, "sampler": name, "seed": s, "rel_err": float((d - ref).norm() / ref.norm()),
                             "cosine": float(d @ ref / (d.norm() * ref.norm())), "seconds": cost["seconds"],
                             "cg_iterations": info["solver"].get("iterations")})
            sel = [r["rel_err"] for r in rows if r["m"] == m and r["sampler"] == name]
            log(f"spread m={m} {name}: rel err {statistics.fmean(sel):.3f} (sd {statistics.pstdev(sel):.3f})")
    summary = {}
    for m in SPREAD_BUDGETS:
        for name in SAMPLERS:
            sel = [r for r in rows if r["m"] == m and r["sampler"] == name]
            summary[f"{name}@{m}"] = {k: dict(zip(("mean", "sd", "ci95"), interval([r[k] for r in sel])))
                                      for k in ("rel_err", "cosine", "seconds")}
    return {"model": "digits MLP 64-32-10 tanh float64", "n_train": 1000, "n_remaining": len(remaining),
            "final_grad_norm": gnorm, "seeds": seeds, "rows": rows, "summary": summary}


def spread_markdown(res: dict, command: str) -> str:
    lines = ["# Spread of the sampled Newton direction (S1)", "", f"Command: `{command}`. {' '.join(spread.__doc__.split(':', 1)[1].split())} "
             f"{res['seeds']} seeds; {res['n_remaining']} remaining examples; mean ± 95 % t-interval.", "",
             "| m | " + " | ".join(f"{n} rel. error" for n in SAMPLERS) + " | " + " | ".join(f"{n} sd" for n in SAMPLERS) + " |",
             "|---|" + "---|" * (2 * len(SAMPLERS))]
    for m in SPREAD_BUDGETS:
        cs = [res["summary"][f"{n}@{m}"]["rel_err"] for n in SAMPLERS]
        lines.append(f"| {m} | " + " | ".join(fmt(c, 3) for c in cs) + " | " + " | ".join(f"{c['sd']:.3f}" for c in cs) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny grid for development")
    ap.add_argument("--datasets", default="mnist,fashion-mnist")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9", help="classes removed in turn (MLP)")
    ap.add_argument("--cnn-classes", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--cnn-seeds", type=int, default=10)
    ap.add_argument("--seed-start", type=int, default=0,
                    help="first sampler seed; > 0 adds seeds to an earlier run (no 100 %% / retraining cells)")
    ap.add_argument("--budgets", default="1,5,10", help="sampled budgets in %% (100 %% always runs once per class)")
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-val", type=int, default=2_000)
    ap.add_argument("--iters", type=int, default=300, help="L-BFGS iterations for training and retraining")
    ap.add_argument("--out", default="sampling")
    ap.add_argument("--merge", default="", help="comma-separated result names to combine into --out (no runs)")
    ap.add_argument("--spread", action="store_true", help="only the S1 spread experiment on digits")
    args = ap.parse_args()
    if args.spread:
        torch.set_num_threads(1)
        return_freed_memory()
        t0 = time.perf_counter()
        res = spread(2 if args.quick else args.seeds, lambda m: print(f"[{time.perf_counter() - t0:6.0f} s] {m}", flush=True))
        res.update(machine=machine(), influent=influent.__version__, total_seconds=time.perf_counter() - t0,
                   command="python benchmarks/sampling.py " + " ".join(sys.argv[1:]))
        write("sampling_spread" + ("_quick" if args.quick else ""), res, spread_markdown(res, res["command"]))
        return
    if args.quick:
        args.datasets, args.models, args.classes, args.cnn_classes = "mnist", "mlp", "0", "0"
        args.seeds = args.cnn_seeds = 2
        args.n_train, args.n_val, args.iters, args.out = 2000, 500, 100, "sampling_quick"
    args.classes = [int(c) for c in args.classes.split(",")]
    args.cnn_classes = [int(c) for c in args.cnn_classes.split(",")]
    args.budgets = [float(b) for b in args.budgets.split(",")]
    if args.merge:
        parts = [json.loads((RESULTS / f"{m}.json").read_text()) for m in args.merge.split(",")]
        payload = {**parts[0], "blocks": combine([b for p in parts for b in p["blocks"]], parts[0]["budgets"]),
                   "command": " ; ".join(p["command"] for p in parts),
                   "plan": " ".join(dict.fromkeys(merged_plan(p["plan"]) for p in parts)),
                   "data": {k: v for p in parts for k, v in p["data"].items()},
                   "total_seconds": sum(p["total_seconds"] for p in parts)}
        payload["verdict"] = verdict(payload)
        write(args.out, payload, markdown(payload))
        plot(payload, RESULTS / f"{args.out}.png")
        return
    torch.set_num_threads(1)
    return_freed_memory()
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.0f} s] {msg}", flush=True)

    blocks = []
    for dataset in args.datasets.split(","):
        for model_name in args.models.split(","):
            blk = run_block(dataset, model_name, args, log)
            if blk["full"]:  # a --seed-start run has no 100 % cells: it is summarised when merged
                blk["summary"] = summarise(blk, args.budgets)
            blocks.append(blk)
    plan = (f"Data: {args.n_train:,} training examples (seeded subset of the training split), {args.n_val:,} "
            f"validation (disjoint), full test split. Budgets {args.budgets} % of the remaining training data plus "
            f"100 % (shared by all samplers); removed classes and seeds per block below. Curvature EK-FAC, solver direct, λ = wd = {WD}; "
            f"L-BFGS {args.iters} iterations for training and retraining.")
    payload = {"command": "python benchmarks/sampling.py " + " ".join(sys.argv[1:]), "plan": plan,
               "budgets": args.budgets, "machine": machine(), "influent": influent.__version__,
               "data": {d: IDX_SETS[d][2] for d in args.datasets.split(",")},
               "total_seconds": None, "blocks": blocks}
    payload["total_seconds"] = time.perf_counter() - t_start
    if not all(b["full"] for b in blocks):
        write(args.out, payload, f"Extra seeds of a sampling run (`{payload['command']}`): combined with the "
                                 "first run by `--merge`, see sampling.md.\n")
        return
    payload["verdict"] = verdict(payload)
    write(args.out, payload, markdown(payload))
    plot(payload, RESULTS / f"{args.out}.png")


if __name__ == "__main__":
    main()
