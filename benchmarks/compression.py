"""Gradient compressors (PAPERS.md §2, D2/D3): (a) cost on one GPT-2 MLP layer, (b) fidelity on digits.

(a) One nn.Linear(768, 3072) (P = 2,362,368), float32, random per-example factors A [B, 769] (bias
    column of ones) and D [B, 3072], blocks of 32 examples: time per 1,000 examples, fit time,
    stored state (state_bytes) and peak RSS for each compressor and k ∈ {1024, 4096, 16384}.
    Factored compressors (Dropout neuron, Dropout element, FactoredGaussian) read the factors;
    flat ones (Dropout element "flat", SJLT, Gaussian, Rademacher, PCA) first materialise the
    [32, P] gradients with influent.factors.flatten_factors, and that time is part of their cost.
    Each seed times blocks until 1,000 examples or --max-seconds, whichever first; fewer than
    1,000 examples is scaled linearly and marked "extrapolated". Gaussian/Rademacher apply the
    map to the first P/72 coordinates (8 of the 577 row tiles) and PCA to the first P/256 (a
    2,000-sample fit and a P × k float64 map would not fit in memory): their compression time is
    scaled by P/P' (the work is linear in P) and marked "extrapolated". PCA's fit (k = 1024 only:
    k ≤ the 2,000 samples) is timed at P' = 2,304 and 9,216 and extrapolated linearly to P.
(b) sklearn digits MLP 64→32→10 tanh, float64, weight decay 1e-3 (benchmarks/solvers.py `build`),
    1000 train × 100 queries: Spearman (mean over queries) of compressed influence
    (curvature="ggn", solver="direct", damping=1e-3) against the uncompressed exact GGN influence,
    for k ∈ {P/100, P/30, P/10, P/3, P}, 5 seeds (PCA is deterministic: 1 run).
(c) GPT-2 end to end: not measured (placeholder in the Markdown).

Each configuration runs in its own process (clean peak RSS) after a warm-up call. Writes
benchmarks/results/compression.json and compression.md.
Usage: python benchmarks/compression.py [--quick] [--max-seconds S]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, rss_mb, run_isolated, spearman_rows, write  # noqa: E402

D_IN, D_OUT = 768, 3072
P_LAYER = (D_IN + 1) * D_OUT  # 2,362,368
BLOCK = 32
N_EXAMPLES = 1000
COST_KS = (1024, 4096, 16384)
DENSE_ROW_TILES = 8  # Gaussian/Rademacher: time the first 8 × 4096 rows of the map, scale by P/P'
PCA_SAMPLES = 2000
PCA_ROWS = (3, 12)  # PCA fitted on the first 3 and 12 weight rows (P' = 2,304 and 9,216), extrapolated linearly
COST_VARIANTS = {  # name: (label, path)
    "dropout-neuron": ("Dropout neuron", "factors"),
    "dropout-element": ("Dropout element", "factors"),
    "dropout-element-flat": ("Dropout element", "flat"),
    "factored_gaussian": ("FactoredGaussian", "factors"),
    "sjlt": ("SJLT (s=1)", "flat"),
    "gaussian": ("Gaussian", "flat"),
    "rademacher": ("Rademacher", "flat"),
    "pca": ("PCA", "flat"),
}
FID_VARIANTS = {
    "dropout-element": "Dropout element",
    "dropout-neuron": "Dropout neuron",
    "gaussian": "Gaussian",
    "sjlt": "SJLT (s=1)",
    "factored_gaussian": "FactoredGaussian",
    "pca": "PCA",
}
FID_DIVISORS = (100, 30, 10, 3, 1)


def make(name: str, k: int, seed: int):
    from influent.compress import PCA, SJLT, Dropout, FactoredGaussian, Gaussian, Rademacher

    if name.startswith("dropout"):
        return Dropout(k, level="neuron" if name == "dropout-neuron" else "element", seed=seed)
    return {"gaussian": Gaussian, "rademacher": Rademacher, "sjlt": SJLT, "factored_gaussian": FactoredGaussian,
            "pca": PCA}[name](k, seed=seed)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_ticks() -> dict[int, tuple[str, int]]:
    ticks = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            ticks[int(d)] = (name, int(rest[11]) + int(rest[12]))  # utime + stime
    return ticks


def other_cpu(window: float = 0.5) -> dict:
    """CPU used by other processes over `window` seconds (this driver runs nothing meanwhile): cores busy, who."""
    if not os.path.isdir("/proc"):
        return {"cores_busy": None, "processes": []}
    a = _cpu_ticks()
    time.sleep(window)
    b = _cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    used = {pid: (b[pid][1] - a[pid][1]) / hz / window for pid in b if pid in a and pid != os.getpid()}
    busy = sorted(((u, b[pid][0]) for pid, u in used.items() if u > 0.1), reverse=True)
    return {"cores_busy": round(sum(used.values()), 2), "processes": [f"{n} {u:.0%}" for u, n in busy[:4]]}


# ----- (a) cost on one Linear(768, 3072) layer ------------------------------------------------------
def random_factors(b: int, seed: int, block: int):
    import torch

    g = torch.Generator().manual_seed(100_003 * seed + block)
    A = torch.cat([torch.randn(b, D_IN, generator=g), torch.ones(b, 1)], 1)
    return [(A, torch.randn(b, D_OUT, generator=g))]


def warm_up_compressed(name: str) -> None:
    """A tiny compressed Attributor with the same compressor class (pays the compressed-GGN first calls)."""
    import torch

    import influent as inf

    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double().eval()
    X, y = torch.randn(8, 3, dtype=torch.float64), torch.arange(8) % 3
    comp = make(name, 4, 0)
    inf.Attributor(m, inf.Task.classification(), curvature="ggn", solver="direct", compress=comp).fit(
        (X, y)).score((X[:2], y[:2]))


def warm_up_cost(name: str) -> None:
    """The same compressor class and the same code paths on a tiny Linear layer (imports, first calls)."""
    import torch
    from torch import nn

    import influent as inf
    from influent.factors import flatten_factors, plan_factors

    m = nn.Linear(16, 8)
    space = inf.select_params(m)
    layers = plan_factors(m, space)
    f = [(torch.cat([torch.randn(4, 16), torch.ones(4, 1)], 1), torch.randn(4, 8))]
    G = flatten_factors(layers, space, f)
    c = make(name.replace("-flat", ""), 4, 0).fit(space, G if name == "pca" else None, layers=layers)
    c.apply_factors(layers, f) if COST_VARIANTS[name][1] == "factors" else c.apply(G)


def cost_one(name: str, k: int, seeds: list[int], n_examples: int, max_seconds: float, pca_rows: list[int],
             n_samples: int) -> dict:
    import torch
    from torch import nn

    import influent as inf
    from influent.compress.base import flat_space
    from influent.factors import flatten_factors, plan_factors

    torch.set_num_threads(2)
    model = nn.Linear(D_IN, D_OUT)
    space = inf.select_params(model)
    layers = plan_factors(model, space)
    warm_up_cost(name)
    base = rss_mb()
    path = COST_VARIANTS[name][1]
    runs, notes = [], []
    scale_p, pca_fit = 1.0, None
    if name in ("gaussian", "rademacher"):
        p_sub = min(P_LAYER, DENSE_ROW_TILES * 4096)
        scale_p = P_LAYER / p_sub
        notes.append(f"map applied to the first {p_sub:,} of {P_LAYER:,} coordinates, compression time × {scale_p:.1f}")
    if name == "pca":
        # fit on n samples of the first rows·768 weight coordinates at two sizes P1 < P2 (both > n, where the
        # SVD's cost is a + b·P'), extrapolate the line to P; apply the P2 map and scale its time by P/P2
        fits = []
        for rows in pca_rows:
            p_sub = rows * D_IN
            g = torch.Generator().manual_seed(7)
            A = torch.randn(n_samples, D_IN, generator=g)
            D = torch.randn(n_samples, rows, generator=g)
            sample = (D[:, :, None] * A[:, None, :]).reshape(n_samples, p_sub)  # the first p_sub weight coords
            pca = make("pca", k, 0)
            t0 = time.perf_counter()
            pca.fit(flat_space(p_sub), sample)
            fits.append((p_sub, time.perf_counter() - t0))
            del sample
        scale_p = P_LAYER / p_sub
        (p1, t1), (p2, t2) = fits[0], fits[-1]
        linear = p2 > p1 and t2 > t1
        full = t2 + (t2 - t1) / (p2 - p1) * (P_LAYER - p2) if linear else t2 * P_LAYER / p2
        pca_fit = {"samples": n_samples, "measured": [{"p_sub": p, "seconds": t} for p, t in fits],
                   "seconds_full_P": full, "extrapolation": "line through the two sizes" if linear else
                   "proportional to P from the larger size (the two timings were not increasing)",
                   "method": "full SVD (auto: min(n, P') <= 2048)", "state_bytes_full_P": P_LAYER * k * 8}
        notes.append(f"PCA fitted on {n_samples} samples of the first {p1:,} and {p2:,} coordinates, fit time "
                     f"extrapolated to P; apply time × {scale_p:.1f}; state = P·k float64")
    for seed in seeds:
        if name == "pca":
            comp, fit_s, state = pca, pca_fit["seconds_full_P"], P_LAYER * k * 8
            apply = lambda G: comp.apply(G[:, :p_sub])  # noqa: E731
        else:
            comp = make(name.replace("-flat", ""), k, seed)
            t0 = time.perf_counter()
            comp.fit(space, layers=layers)
            fit_s, state = time.perf_counter() - t0, comp.state_bytes
            if name in ("gaussian", "rademacher"):
                sub = make(name, k, seed).fit(flat_space(p_sub))
                apply = lambda G, sub=sub: sub.apply(G[:, :p_sub])  # noqa: E731
            else:
                apply = comp.apply
        done, t_mat, t_comp, blocks = 0, 0.0, 0.0, 0
        while done < n_examples:
            b = min(BLOCK, n_examples - done)
            f = random_factors(b, seed, blocks)
            if path == "factors":
                t0 = time.perf_counter()
                Z = comp.apply_factors(layers, f)
                t_comp += time.perf_counter() - t0
            else:
                t0 = time.perf_counter()
                G = flatten_factors(layers, space, f)
                t1 = time.perf_counter()
                Z = apply(G)
                t2 = time.perf_counter()
                t_mat, t_comp = t_mat + (t1 - t0), t_comp + (t2 - t1) * scale_p
                del G
            assert Z.shape == (b, comp.k_), Z.shape
            done, blocks = done + b, blocks + 1
            if t_mat + t_comp > max_seconds:
                break
        per = N_EXAMPLES / done
        runs.append({"seed": seed, "k_actual": int(comp.k_), "fit_seconds": fit_s, "state_bytes": int(state),
                     "examples_timed": done, "seconds_per_1000": (t_mat + t_comp) * per,
                     "materialise_seconds_per_1000": t_mat * per, "compress_seconds_per_1000": t_comp * per})
    extrapolated = scale_p != 1.0 or any(r["examples_timed"] < N_EXAMPLES for r in runs)
    return {"runs": runs, "path": path, "extrapolated": extrapolated, "notes": notes, "pca_fit": pca_fit,
            "peak_rss_mb": peak_rss_mb(), "delta_rss_mb": peak_rss_mb() - base}


# ----- (b) fidelity on the digits MLP ---------------------------------------------------------------
def exact_one(cache: Path, out: Path) -> dict:
    import torch

    import influent as inf
    from solvers import build, warm_up

    torch.set_num_threads(2)
    model, train, query = build("digits", cache)
    warm_up()
    t0 = time.perf_counter()
    attr = inf.Attributor(model, inf.Task.classification(), curvature="ggn", solver="direct", damping=1e-3).fit(train)
    values = attr.score(query).values
    seconds = time.perf_counter() - t0
    np.save(out, values.double().numpy())
    return {"seconds": seconds, "n_params": attr.space_.numel, "peak_rss_mb": peak_rss_mb()}


def fidelity_one(name: str, ks: list[int], seeds: list[int], cache: Path, exact: Path) -> dict:
    import torch

    import influent as inf
    from solvers import build, warm_up

    torch.set_num_threads(2)
    model, train, query = build("digits", cache)
    ref = np.load(exact)
    warm_up()
    warm_up_compressed(name)
    runs: dict = {}
    for k in ks:
        for seed in (seeds[:1] if name == "pca" else seeds):
            key = f"{k}:{seed}"
            try:
                comp = make(name, k, seed)
                t0 = time.perf_counter()
                attr = inf.Attributor(model, inf.Task.classification(), curvature="ggn", solver="direct",
                                      damping=1e-3, compress=comp).fit(train)
                values = attr.score(query).values.double().numpy()
                seconds = time.perf_counter() - t0
                rho, rho_flat = spearman_rows(values, ref)
                runs[key] = {"k": k, "seed": seed, "k_actual": int(attr.compressor_.k_), "spearman": rho,
                             "spearman_flat": rho_flat, "seconds": seconds}
            except Exception as e:  # recorded per configuration (e.g. PCA with k above its sample size)
                runs[key] = {"k": k, "seed": seed, "error": f"{type(e).__name__}: {e}"[:300]}
    return {"runs": runs, "peak_rss_mb": peak_rss_mb()}


# ----- driver --------------------------------------------------------------------------------------
def mean_sd(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else (math.nan, math.nan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cost", nargs=7, help=argparse.SUPPRESS)
    ap.add_argument("--exact", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--fidelity", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, k=1024 in (a), k ∈ {P/10, P} in (b)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="time budget per seed and configuration in (a) before extrapolating (default 6; quick 2)")
    ap.add_argument("--parts", default="ab", help="which parts to run: a, b or ab")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--render", action="store_true",
                    help="rewrite compression.md from the saved compression.json (no measurement)")
    args = ap.parse_args()
    if args.render:
        from _common import RESULTS

        results = json.loads((RESULTS / "compression.json").read_text())
        results["rendered"] = "python benchmarks/compression.py --render"
        write("compression", results, table(results))
        return
    if args.cost:
        name, k, seeds, n, cap, rows, samples = args.cost
        print(json.dumps(cost_one(name, int(k), [int(s) for s in seeds.split(",")], int(n), float(cap),
                                  [int(r) for r in rows.split(",")], int(samples))))
        return
    if args.exact:
        print(json.dumps(exact_one(Path(args.exact[0]), Path(args.exact[1]))))
        return
    if args.fidelity:
        name, ks, seeds, cache, exact = args.fidelity
        print(json.dumps(fidelity_one(name, [int(k) for k in ks.split(",")], [int(s) for s in seeds.split(",")],
                                      Path(cache), Path(exact))))
        return

    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    cap = args.max_seconds if args.max_seconds is not None else (1.0 if args.quick else 3.0)
    cost_ks = [1024] if args.quick else list(COST_KS)
    pca_rows, pca_samples = ((2, 3), 1100) if args.quick else (PCA_ROWS, PCA_SAMPLES)
    command = "python benchmarks/compression.py" + (" --quick" if args.quick else "") + \
        (f" --max-seconds {args.max_seconds:g}" if args.max_seconds is not None else "") + \
        (f" --parts {args.parts}" if args.parts != "ab" else "")
    t_start = time.perf_counter()
    results: dict = {"command": command, "machine": machine(), "quick": args.quick, "seeds": seeds,
                     "load_before": load_average(), "other_cpu": [other_cpu(1.0)],
                     "settings": {"block": BLOCK, "n_examples": N_EXAMPLES, "max_seconds_per_seed": cap,
                                  "dense_row_tiles": DENSE_ROW_TILES, "pca_samples": pca_samples,
                                  "pca_rows": list(pca_rows)},
                     "cost": {}, "fidelity": {}}
    if "a" in args.parts:
        for name in COST_VARIANTS:
            for k in cost_ks:
                if name == "pca" and k > pca_samples:
                    results["cost"][f"{name}:{k}"] = {"error": f"n/a: PCA needs k ≤ the {pca_samples:,}-sample size"}
                    continue
                results["other_cpu"].append(other_cpu())
                print(f"[{time.perf_counter() - t_start:.0f} s]", end=" ", flush=True)
                res = run_isolated(__file__, ["--cost", name, str(k), ",".join(map(str, seeds)), str(N_EXAMPLES),
                                              str(cap), ",".join(map(str, pca_rows)), str(pca_samples)],
                                   args.timeout)
                results["cost"][f"{name}:{k}"] = summarise_cost(res)
                print("cost", name, k, {x: v for x, v in results["cost"][f"{name}:{k}"].items() if x != "runs"},
                      flush=True)
    if "b" in args.parts:
        cache = Path(tempfile.mkdtemp(prefix="influent-bench-"))
        from solvers import build

        build("digits", cache)  # train once, outside the timed runs
        exact = cache / "exact-ggn.npy"
        results["fidelity"]["exact"] = run_isolated(__file__, ["--exact", str(cache), str(exact)], args.timeout)
        P = results["fidelity"]["exact"].get("n_params", 2410)
        fid_ks = [round(P / d) for d in ((10, 1) if args.quick else FID_DIVISORS)]
        results["fidelity"]["ks"] = fid_ks
        for name in FID_VARIANTS:
            results["other_cpu"].append(other_cpu())
            print(f"[{time.perf_counter() - t_start:.0f} s]", end=" ", flush=True)
            res = run_isolated(__file__, ["--fidelity", name, ",".join(map(str, fid_ks)), ",".join(map(str, seeds)),
                                          str(cache), str(exact)], args.timeout)
            results["fidelity"][name] = summarise_fidelity(res, fid_ks)
            print("fidelity", name, {k: (v.get("spearman"), v.get("error")) for k, v in
                                     results["fidelity"][name].get("by_k", {}).items()}, flush=True)
    results["other_cpu"].append(other_cpu(1.0))
    results["load_after"] = load_average()
    results["total_seconds"] = time.perf_counter() - t_start
    write("compression", results, table(results))


def summarise_cost(res: dict) -> dict:
    if "error" in res:
        return res
    runs = res["runs"]
    for key in ("seconds_per_1000", "materialise_seconds_per_1000", "compress_seconds_per_1000", "fit_seconds",
                "state_bytes", "k_actual", "examples_timed"):
        res[key] = mean_sd([r[key] for r in runs])
    return res


def summarise_fidelity(res: dict, ks: list[int]) -> dict:
    if "error" in res:
        return res
    by_k = {}
    for k in ks:
        runs = [r for r in res["runs"].values() if r["k"] == k]
        ok = [r for r in runs if "error" not in r]
        if not ok:
            by_k[str(k)] = {"error": runs[0]["error"] if runs else "not run"}
            continue
        by_k[str(k)] = {"n": len(ok), "k_actual": sorted({r["k_actual"] for r in ok}),
                        "spearman": mean_sd([r["spearman"] for r in ok]),
                        "spearman_flat": mean_sd([r["spearman_flat"] for r in ok]),
                        "seconds": mean_sd([r["seconds"] for r in ok])}
    res["by_k"] = by_k
    return res


# ----- Markdown ------------------------------------------------------------------------------------
def pm(ms, fmt: str = ".3f") -> str:
    m, s = ms
    return "–" if m != m else f"{m:{fmt}} ± {s:{fmt}}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def seconds_str(ms) -> str:
    m, s = ms
    if m != m:
        return "–"
    if m < 1e-3:
        return f"{m:.1e} ± {s:.0e}"
    fmt = ".4f" if m < 0.1 else ".3f" if m < 10 else ".1f" if m < 1000 else ".0f"
    return f"{m:{fmt}} ± {s:{fmt}}"


def table(results: dict) -> str:
    mach = results["machine"]
    samples = [o["cores_busy"] for o in results["other_cpu"] if o["cores_busy"] is not None]
    shared_frac = sum(c >= 0.5 for c in samples) / max(len(samples), 1)
    shared = shared_frac > 0 if samples else results["load_before"][0] >= 1.0
    who = sorted({p.rsplit(" ", 1)[0] for o in results["other_cpu"] for p in o["processes"]})
    lines = ["## Gradient compression (`" + results["command"] + "`)", "",
             f"Machine: {mach['cores']} cores ({mach['cpu']}), torch {mach['torch']}, {mach['threads']} threads, "
             f"Python {mach['python']}. Seeds: {len(results['seeds'])} per configuration; tables show mean ± sd "
             f"over seeds. Total wall time {results['total_seconds'] / 60:.1f} min."
             + (f" Markdown re-rendered from compression.json (`{results['rendered']}`, no new measurement)."
                if results.get("rendered") else ""), "",
             f"Load average (1, 5, 15 min) before: {results['load_before']}, after: {results['load_after']} (the "
             "after value includes this benchmark's own 2 threads; a before value near 1 can be the tail of a "
             "preceding run). Other processes' CPU, sampled between "
             f"configurations ({len(samples)} samples): median {statistics.median(samples) if samples else 0:.2f} "
             f"cores, max {max(samples, default=0):.2f} cores; ≥ 0.5 core busy in {shared_frac:.0%} of samples"
             + (f" ({', '.join(who)})" if who else "") + ". "
             + ("**The machine was shared while measuring**, so absolute times are noisy (and inflated where others "
                "ran); ratios between compressors measured close together are more reliable than the seconds."
                if shared else "No other process used ≥ 0.5 core in any sample: the shared machine was effectively "
                "idle during this run."),
             ""]
    if results["quick"]:
        lines += ["**Smoke run (`--quick`)**: fewer seeds and ks; not the reported numbers.", ""]
    if results["cost"]:
        lines += cost_table(results)
    if results["fidelity"]:
        lines += fidelity_table(results)
    lines += ["### (c) GPT-2 end to end — NOT MEASURED YET", "",
              "Placeholder. Per-example gradients + compression on a random-init GPT-2-small / SmolLM2-135M "
              "(PAPERS.md §2 D3: 8 × 128 tokens, gradients and compression timed separately) are out of scope "
              "of this script; nothing here measures them.", ""]
    return "\n".join(lines) + "\n"


def cost_table(results: dict) -> list[str]:
    s = results["settings"]
    cost = results["cost"]
    lines = [f"### (a) Compression cost: one nn.Linear({D_IN}, {D_OUT}) layer (P = {P_LAYER:,}), float32", "",
             f"Random per-example factors A [B, {D_IN + 1}] (last column = 1 for the bias) and D [B, {D_OUT}] of the "
             f"layer (`plan_factors` on a real nn.Linear, space from `select_params`), blocks of {s['block']} "
             "examples. *factors*: `apply_factors(layers, factors)`, the [B, P] gradient is never formed. "
             "*flat*: the block's [32, P] gradients (302 MB) are first materialised with "
             "`influent.factors.flatten_factors`, and that time is included (column 'of which materialising'). "
             f"Each seed times blocks until {s['n_examples']} examples or {s['max_seconds_per_seed']:g} s, then "
             "scales linearly to 1,000 examples (marked *extrapolated*; examples timed in the last column): to keep "
             "the whole benchmark under 15 minutes the flat configurations are timed on ~200 examples per seed "
             "(one block for Gaussian, Rademacher and PCA), not 1,000. "
             f"Gaussian/Rademacher regenerate their map tile by tile (4096 × 1024 float32 tiles) on every call, so "
             f"their cost is dominated by drawing P·k random numbers per block; the map is applied to the first "
             f"{s['dense_row_tiles']} row tiles only and the compression time scaled by P/P' (the work is linear "
             "in P). Because the tiles are redrawn on every call, their cost per example falls as 1/B with larger "
             "blocks (here B = 32). State = `state_bytes` (tensors kept between calls). Peak RSS is the configuration's process "
             "(all seeds).", "",
             "| compressor | path | k | k actual | time per 1,000 examples (s) | of which materialising (s) | "
             "fit (s) | stored state | peak RSS MB | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for key, r in cost.items():
        name, k = key.split(":")
        label, path = COST_VARIANTS[name]
        if "error" in r:
            lines.append(f"| {label} | {path} | {k} | – | – | – | – | – | – | {r['error']} |")
            continue
        note = []
        if r["extrapolated"]:
            ex = r["examples_timed"][0]
            note.append(f"extrapolated ({ex:.0f} examples timed per seed" +
                        ("; map on P/%.0f" % (P_LAYER / (s['dense_row_tiles'] * 4096)) if name in
                         ("gaussian", "rademacher") else "") +
                        ("; map on P/%.0f" % (P_LAYER / (s['pca_rows'][-1] * D_IN)) if name == "pca" else "") +
                        ")")
        mat = seconds_str(r["materialise_seconds_per_1000"]) if path == "flat" else "0 (factors)"
        fit = seconds_str(r["fit_seconds"]) if name != "pca" else f"{r['fit_seconds'][0]:.0f} (extrapolated)"
        lines.append(f"| {label} | {path} | {k} | {r['k_actual'][0]:.0f} | {seconds_str(r['seconds_per_1000'])} | "
                     f"{mat} | {fit} | {human_bytes(r['state_bytes'][0])} | {r['peak_rss_mb']:.0f} | "
                     f"{'; '.join(note)} |")
    pca = next((r for key, r in cost.items() if key.startswith("pca:") and "pca_fit" in r and r["pca_fit"]), None)
    if pca:
        f = pca["pca_fit"]
        measured = ", ".join(f"{m['seconds']:.1f} s at P' = {m['p_sub']:,}" for m in f["measured"])
        n = f["samples"]
        lines += ["", f"PCA fit (k = 1024, {n:,}-sample, {f['method']}): measured {measured} → **≈ "
                  f"{f['seconds_full_P']:.0f} s ({f['seconds_full_P'] / 3600:.1f} h) extrapolated to P** "
                  f"({f['extrapolation']}; a rough estimate: the fit is not timed at full P"
                  + (" and the two timings grow faster than P between them" if len(f["measured"]) > 1 and
                     f["measured"][-1]["seconds"] / f["measured"][0]["seconds"] >
                     f["measured"][-1]["p_sub"] / f["measured"][0]["p_sub"] else "") + "). At full P the "
                  f"sample alone is {n * P_LAYER * 4 / 2**30:.1f} GiB in float32 (PCA.fit copies it to "
                  f"float64: {n * P_LAYER * 8 / 2**30:.1f} GiB more) and the map P × k float64 is "
                  f"{human_bytes(f['state_bytes_full_P'])}, so neither could be run on this "
                  f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB machine. "
                  f"k = 4096 and 16384 exceed the {n:,}-sample rank (PCA needs ≥ k samples; their maps would "
                  f"be {human_bytes(P_LAYER * 4096 * 8)} and {human_bytes(P_LAYER * 16384 * 8)}). `PCA.apply` also "
                  "converts the whole float64 map to the gradients' dtype on every call (included in its time)."]
    # targets: neuron dropout vs SJLT and FactoredGaussian at equal k
    lines += ["", "**Targets** (neuron dropout ≥ 10× faster than SJLT and ≥ 2× faster than FactoredGaussian at "
              "equal k, O(1) stored state):", "",
              "| k | Dropout neuron (s/1000) | SJLT (s/1000) | speed-up vs SJLT | vs SJLT's compression alone | "
              "FactoredGaussian (s/1000) | speed-up vs FactoredGaussian | neuron state | met? |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for k in sorted({int(key.split(":")[1]) for key in cost}):
        nr, sj, fg = (cost.get(f"{n}:{k}", {}) for n in ("dropout-neuron", "sjlt", "factored_gaussian"))
        if any("error" in x or not x for x in (nr, sj, fg)):
            continue
        t_n, t_s, t_f = nr["seconds_per_1000"][0], sj["seconds_per_1000"][0], fg["seconds_per_1000"][0]
        ok_s, ok_f = t_s / t_n >= 10, t_f / t_n >= 2
        state = nr["state_bytes"][0]
        verdict = ", ".join([f"SJLT {'yes' if ok_s else 'NO'}", f"FactoredGaussian {'yes' if ok_f else 'NO'}",
                             "O(1) state NO (16 bytes per kept entry)" if state > 1024 else "O(1) state yes"])
        lines.append(f"| {k} | {seconds_str(nr['seconds_per_1000'])} | {seconds_str(sj['seconds_per_1000'])} | "
                     f"{t_s / t_n:.0f}× | {sj['compress_seconds_per_1000'][0] / t_n:.0f}× | "
                     f"{seconds_str(fg['seconds_per_1000'])} | {t_f / t_n:.1f}× | "
                     f"{human_bytes(state)} | {verdict} |")
    lines += ["", "Neuron-level dropout stores nothing: its kept rows and columns are redrawn from (seed, layer) "
              "on each call (O(out + d_a) per layer, included in its time). Element-level dropout keeps its k "
              "coordinates and scales (16·k bytes); Gaussian, Rademacher and SJLT regenerate their maps and store "
              "nothing. At large k both factored maps are bound by writing the [B, k] output (an outer product "
              "of the kept rows and columns, then a scale), so neuron dropout's lead over FactoredGaussian "
              "(whose two small matmuls are cheap) shrinks as k grows.", ""]
    return lines


def fidelity_table(results: dict) -> list[str]:
    fid = results["fidelity"]
    ks = fid.get("ks", [])
    ex = fid.get("exact", {})
    P = ex.get("n_params", 2410)
    names = [n for n in FID_VARIANTS if n in fid]
    head = " | ".join(f"k = {k} ({'P' if k == P else 'P/' + str(round(P / k))})" for k in ks)
    lines = [f"### (b) Fidelity: digits MLP 64→32→10 ({P:,} params), float64, 1000 train × 100 queries", "",
             "Spearman (mean over the 100 queries of the per-query rank correlation over 1000 training examples) of "
             "compressed influence, `Attributor(curvature=\"ggn\", solver=\"direct\", damping=1e-3, compress=C)`, "
             "against the uncompressed exact GGN influence (same curvature, damping and solver; "
             f"{ex.get('seconds', float('nan')):.2f} s). The damping is 1e-3 in the compressed space for every "
             "compressor (no rescaling by the compressor's scale). PCA is deterministic (1 run) and, inside "
             "`Attributor`, is fitted on min(n_train, max(4k, 256)) training gradients, so k ≤ 1000.", "",
             f"| compressor | {head} |", "|---|" + "---:|" * len(ks)]
    for n in names:
        cells = []
        for k in ks:
            r = fid[n].get("by_k", {}).get(str(k), {"error": fid[n].get("error", "not run")})
            if "error" in r:
                cells.append("n/a" if "PCA" in r["error"] else "error")
            else:
                ka = r["k_actual"]
                cells.append(pm(r["spearman"]) + ("" if ka == [k] else f" (k={'/'.join(map(str, ka))})"))
        lines.append(f"| {FID_VARIANTS[n]} | " + " | ".join(cells) + " |")
    lines += ["", "Time per configuration (s, fit + full 100 × 1000 score matrix, after a warm-up call):", "",
              f"| compressor | {head} |", "|---|" + "---:|" * len(ks)]
    for n in names:
        cells = []
        for k in ks:
            r = fid[n].get("by_k", {}).get(str(k), {})
            cells.append(pm(r["seconds"], ".2f") if "seconds" in r else "–")
        lines.append(f"| {FID_VARIANTS[n]} | " + " | ".join(cells) + " |")
    errors = {(FID_VARIANTS[n], k): r["error"] for n in names for k, r in fid[n].get("by_k", {}).items()
              if "error" in r}
    errors.update({(FID_VARIANTS[n], "all"): fid[n]["error"] for n in names if "error" in fid[n]})
    if errors:
        lines += [""] + [f"- {n}, k = {k}: {e}" for (n, k), e in errors.items()]
    # target: dropout within 0.02 of Gaussian at each k
    lines += ["", "**Target**: dropout's Spearman within 0.02 of Gaussian's at each k (a deficit > 0.02 is a miss; "
              "dropout above Gaussian counts as met):", "",
              "| k | Gaussian | Dropout element (Δ) | Dropout neuron (Δ) |", "|---:|---:|---:|---:|"]
    misses = []
    for k in ks:
        g = fid.get("gaussian", {}).get("by_k", {}).get(str(k), {})
        if "spearman" not in g:
            continue
        cells = []
        for n in ("dropout-element", "dropout-neuron"):
            d = fid.get(n, {}).get("by_k", {}).get(str(k), {})
            if "spearman" not in d:
                cells.append("–")
                continue
            delta = d["spearman"][0] - g["spearman"][0]
            ok = delta >= -0.02
            if not ok:
                misses.append(f"{FID_VARIANTS[n]} at k = {k} (Δ = {delta:+.3f})")
            cells.append(f"{pm(d['spearman'])} ({delta:+.3f}{'' if ok else ' MISS'})")
        lines.append(f"| {k} | {pm(g['spearman'])} | " + " | ".join(cells) + " |")
    lines += ["", ("Target missed: " + "; ".join(misses) + ".") if misses else "Target met at every k.", ""]
    return lines


if __name__ == "__main__":
    main()
