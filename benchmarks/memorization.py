"""Memorisation by sign, selective removal and fewer-parameter influence (PAPERS.md §4; issue 7).

Data: MNIST and Fashion-MNIST (`make data`), images flattened to 784. Per seed s, a seeded permutation
of the 60,000 training images gives a training subset of --n-train (default 4,000, not the full
60,000: 30 configurations must fit on 2 shared CPU cores) and a clean validation split of --n-val
(default 5,000, the held-out reference set V of both parts; 1,000 before issue 7's rerun: a larger V
lowers the noise of the aggregate; part (c) keeps 1,000);
a seeded fraction of the training labels (0 / 10 / 20 %) is flipped to another class
(influent.eval.flip_labels). Test accuracy is always on the full 10,000-image test split.
Model: MLP 784→32→10 tanh, float32, Adam (lr 1e-3, batch 128), mean CE + (wd/2)‖θ‖², wd = 1e-3, 30 epochs.

(a) Memorisation: the no-removal model, its last layer refit to the optimum of the (convex) last-layer
    objective by L-BFGS (`apps.memorization.refit`), then `apps.memorization.analyze` with last-layer
    influence (exact GGN = Hessian of the last layer, damping = wd) over the validation split, for the
    loss (= −log p_y) and the classification-influence measurements margin and probability p_y. "Memorised" (aggregate ≤ 0) against the flipped labels:
    count, precision, recall; next to the top-k of last-layer self-influence at the same k; AUROCs.
(b) Selective removal (`apps.pruning.prune`, loss measurement, last layer, refit_params=True: each
    round scores a copy whose last layer is refit by L-BFGS; --no-refit for the earlier runs): rounds
    after epochs 5, 10, 15, 20, 25; caps 10 % per round, 20 % overall, 30 % per class (the paper's caps).
    Against equal-count random removal (same per-round counts), no removal, and a ceiling that no
    removal rule can pass by much: training on the clean-labelled points only (the flipped mask used
    only here, never to choose anything). Mean over seeds with
    95 % t-intervals, and paired differences.
(c) Fewer parameters: per data set, seed 0, 20 % noise, 1,000 training points, the model trained
    as above and then to ‖∇R‖ < 1e-8 by Newton-CG (influent.eval.Retrainer, float64). Last-layer
    influence (direct) vs full-parameter influence (GGN + CG, damping = wd) on 50 test queries:
    Spearman per query (mean), Spearman and sign agreement of the validation aggregates,
    memorised-label agreement, LDS (influent.eval.lds, m subsets of half the data) and time.

Writes benchmarks/results/memorization.json, memorization.md and memorization_*.png.
Usage: python benchmarks/memorization.py [--quick] [--workers 2] [--n-train 4000] [--seeds 5]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write  # noqa: E402

HIDDEN, WD, LR, BATCH, EPOCHS, N_VAL = 32, 1e-3, 1e-3, 128, 30, 5000
MEASUREMENTS = ("loss", "margin", "prob")
CAPS = {"cap_round": 0.1, "cap_total": 0.2, "cap_per_class": 0.3, "warmup": 5, "every": 5}
DATASETS = {"mnist": "load_mnist", "fashion-mnist": "load_fashion_mnist"}
_DATA: dict = {}


def data(name: str):
    """(X_train [60000, 784], y_train, X_test [10000, 784], y_test), loaded once per process."""
    if name not in _DATA:
        import influent.data as d

        load = getattr(d, DATASETS[name])
        (X, y), (Xt, yt) = load("train"), load("test")
        _DATA[name] = (X.flatten(1), y, Xt.flatten(1), yt)
    return _DATA[name]


def split(name: str, seed: int, n_train: int, noise: float, n_val: int = N_VAL):
    import torch

    from influent.eval import flip_labels

    X, y, Xt, yt = data(name)
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, va = perm[:n_train], perm[n_train: n_train + n_val]
    y_noisy, flipped = flip_labels(y[tr], noise, 10, seed=seed)
    return (X[tr], y_noisy), flipped, (X[va], y[va]), (Xt, yt)


def accuracy(model, test) -> float:
    import torch

    with torch.no_grad():
        return float((model(test[0]).argmax(1) == test[1]).double().mean())


def pr(pred, truth) -> dict:
    tp = int((pred & truth).sum())
    k, t = int(pred.sum()), int(truth.sum())
    return {"count": k, "precision": tp / k if k and t else float("nan"), "recall": tp / t if t else float("nan")}


def memorisation(model, train, val, flipped) -> dict:
    import torch

    import influent as inf
    from influent.apps import memorization
    from influent.eval import detection_auc

    out = {}
    for m in MEASUREMENTS:
        t0 = time.perf_counter()
        attr = inf.Attributor(model, inf.Task.classification(m), params="last", curvature="ggn", damping=WD).fit(train)
        res = memorization.analyze(attr, val, self_influence=(m == "loss"))
        row = {"sign": pr(res.memorised, flipped), "seconds": time.perf_counter() - t0}
        if m == "loss":
            si = res.self_influence
            top = torch.zeros_like(flipped)
            top[torch.argsort(si, descending=True)[: int(res.memorised.sum())]] = True
            row["self_influence_same_k"] = pr(top, flipped)
            if 0 < int(flipped.sum()):
                row["auc_self_influence"] = detection_auc(si, flipped)["auc"]
        if 0 < int(flipped.sum()):
            row["auc_minus_aggregate"] = detection_auc(-res.aggregate, flipped)["auc"]
        out[m] = row
        if m == "margin":
            out["_result"] = res
    return out


def run_config(name: str, noise: float, seed: int, n_train: int, epochs: int, plot: str | None,
               n_val: int = N_VAL, refit: bool = True) -> dict:
    """One (data set, noise, seed): no removal, selective removal, random removal, memorisation."""
    import torch

    torch.set_num_threads(1)
    import influent as inf
    from influent.apps import memorization, pruning
    from influent.train import mlp

    train, flipped, val, test = split(name, seed, n_train, noise, n_val)
    model = mlp([784, HIDDEN, 10], seed=seed)
    kw = dict(epochs=epochs, weight_decay=WD, damping=WD, lr=LR, batch_size=BATCH, seed=seed, **CAPS)
    row = {"dataset": name, "noise": noise, "seed": seed, "n_flipped": int(flipped.sum())}
    t0 = time.perf_counter()
    none = pruning.prune(model, train, val, select="none", **kw)
    t1 = time.perf_counter()
    sel = pruning.prune(model, train, val, select="influence", refit_params=refit, **kw)
    t2 = time.perf_counter()
    rnd = pruning.prune(model, train, val, select="random", counts=sel.counts, **kw)
    t3 = time.perf_counter()
    clean = pruning.prune(model, (train[0][~flipped], train[1][~flipped]), val, select="none", **kw)
    removed = torch.cat(sel.removed) if sel.removed else torch.zeros(0, dtype=torch.long)
    row["removal"] = {
        "acc_none": accuracy(none.model, test), "acc_selective": accuracy(sel.model, test),
        "acc_random": accuracy(rnd.model, test), "acc_clean_only": accuracy(clean.model, test),
        "counts": sel.counts, "refit_grad_norms": [r.get("refit_grad_norm") for r in sel.rounds],
        "removed_flipped_fraction": float(flipped[removed].double().mean()) if removed.numel() else float("nan"),
        "sample_passes": {"none": none.sample_passes, "selective": sel.sample_passes, "random": rnd.sample_passes},
        "seconds": {"none": t1 - t0, "selective": t2 - t1, "random": t3 - t2}}
    polished, row["last_layer_grad_norm"] = memorization.refit(none.model, inf.Task.classification(), train,
                                                               weight_decay=WD, max_iter=500, tol=1e-6)
    mem = memorisation(polished, train, val, flipped)
    res = mem.pop("_result")
    row["memorisation"] = mem
    if plot:
        RESULTS.mkdir(parents=True, exist_ok=True)
        res.plot(RESULTS / f"{plot}_{name}_noise{int(100 * noise)}.png", flipped=flipped)
    return row


def fewer_parameters(name: str, n: int, n_query: int, m: int, epochs: int) -> dict:
    """(c) last-layer vs full-parameter influence on a model trained to its optimum."""
    import torch

    torch.set_num_threads(1)
    import influent as inf
    from influent.apps import memorization, pruning
    from influent.eval import Retrainer, lds, spearman
    from influent.train import mlp

    train, flipped, val, test = split(name, 0, n, 0.2, n_val=1000)
    task = inf.Task.classification()
    warm = pruning.prune(mlp([784, HIDDEN, 10], seed=0), train, val, select="none", epochs=epochs, weight_decay=WD,
                         lr=LR, batch_size=BATCH).model
    t0 = time.perf_counter()
    opt = Retrainer(warm, task, train, WD, tol=1e-8, max_iter=200, cache=False).fit(torch.arange(n))
    model = opt.model
    train64 = (train[0].double(), train[1])
    val64 = (val[0].double(), val[1])
    query = (test[0][:n_query].double(), test[1][:n_query])
    out = {"dataset": name, "n_train": n, "n_query": n_query, "noise": 0.2, "grad_norm": opt.grad_norm,
           "optimum_seconds": time.perf_counter() - t0, "params_full": sum(p.numel() for p in model.parameters())}
    runs = {}
    for label, params, solver in (("last", "last", "direct"), ("full", "all", inf.solvers.CG(rtol=1e-8, max_iter=2000))):
        t = time.perf_counter()
        attr = inf.Attributor(model, task, params=params, curvature="ggn", solver=solver, damping=WD).fit(train64)
        scores = attr.score(query).values.detach()
        seconds = time.perf_counter() - t
        agg = memorization.analyze(attr, val64)
        runs[label] = (scores, agg, seconds, attr.space_.numel)
    (s_last, a_last, t_last, p_last), (s_full, a_full, t_full, _) = runs["last"], runs["full"]
    out.update({
        "params_last": p_last, "seconds_last": t_last, "seconds_full": t_full, "speedup": t_full / t_last,
        "spearman_per_query_mean": statistics.fmean(spearman(s_last[q], s_full[q]) for q in range(n_query)),
        "spearman_aggregate": spearman(a_last.aggregate, a_full.aggregate),
        "sign_agreement_aggregate": float((torch.sign(a_last.aggregate) == torch.sign(a_full.aggregate)).double().mean()),
        "memorised_last": int(a_last.memorised.sum()), "memorised_full": int(a_full.memorised.sum()),
        "memorised_precision_full": pr(a_full.memorised, flipped)["precision"],
        "memorised_precision_last": pr(a_last.memorised, flipped)["precision"]})
    out["lds_subsets"] = m
    partial = RESULTS / f"memorization_c_{name}.json"  # kept as each part finishes (LDS is the slow part)
    partial.write_text(json.dumps(out, indent=2))
    import tempfile  # the two LDS calls retrain the same subsets: the second one reads the first's cache

    rt = Retrainer(model, task, train, WD, tol=1e-7, max_iter=200, cache_dir=tempfile.mkdtemp(prefix="influent-lds-"))
    for label, scores in (("last", s_last), ("full", s_full)):
        t = time.perf_counter()
        res = lds(scores, model, task, train64, query, WD, m=m, alpha=0.5, retrainer=rt)
        out[f"lds_{label}"] = res.value
        out[f"lds_seconds_{label}"] = time.perf_counter() - t
        partial.write_text(json.dumps(out, indent=2))
    return out


# ----- summary ---------------------------------------------------------------------------------------
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def ci(values: list[float]) -> dict:
    """Mean, sd and the 95 % t-interval half-width (nan entries dropped)."""
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return {"mean": float("nan"), "sd": float("nan"), "half": float("nan"), "n": 0}
    sd = statistics.stdev(v) if len(v) > 1 else float("nan")
    half = T975.get(len(v) - 1, 1.96) * sd / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": statistics.fmean(v), "sd": sd, "half": half, "n": len(v)}


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["noise"]), []).append(r)
    out = []
    for (name, noise), rs in sorted(groups.items()):
        g = lambda f: ci([f(r) for r in rs])  # noqa: E731
        rem = lambda k: (lambda r: r["removal"][k])  # noqa: E731
        out.append({
            "dataset": name, "noise": noise, "seeds": len(rs),
            "acc_none": g(rem("acc_none")), "acc_selective": g(rem("acc_selective")), "acc_random": g(rem("acc_random")),
            "acc_clean_only": g(lambda r: r["removal"].get("acc_clean_only", float("nan"))),
            "clean_minus_none": g(lambda r: r["removal"].get("acc_clean_only", float("nan")) - r["removal"]["acc_none"]),
            "sel_minus_none": g(lambda r: r["removal"]["acc_selective"] - r["removal"]["acc_none"]),
            "sel_minus_random": g(lambda r: r["removal"]["acc_selective"] - r["removal"]["acc_random"]),
            "removed": g(lambda r: float(sum(r["removal"]["counts"]))),
            "removed_flipped_fraction": g(rem("removed_flipped_fraction")),
            "passes_selective_over_none": g(lambda r: r["removal"]["sample_passes"]["selective"]
                                            / r["removal"]["sample_passes"]["none"]),
            **{f"{m}_{k}": g(lambda r, m=m, k=k: r["memorisation"][m]["sign"][k])
               for m in MEASUREMENTS for k in ("count", "precision", "recall")
               if all(m in r["memorisation"] for r in rs)},
            **{f"self_{k}": g(lambda r, k=k: r["memorisation"]["loss"]["self_influence_same_k"][k])
               for k in ("precision", "recall")},
            **{f"auc_{k}": g(lambda r, k=k: r["memorisation"].get(k.split(":")[0], {}).get(
                "auc_" + k.split(":")[1], float("nan"))) for k in ("loss:minus_aggregate", "margin:minus_aggregate",
                                                                   "prob:minus_aggregate", "loss:self_influence")},
            "last_layer_grad_norm": g(lambda r: r["last_layer_grad_norm"]),
            "seconds": g(lambda r: sum(r["removal"]["seconds"].values()))})
    return out


def fmt(c: dict, scale: float = 1.0, digits: int = 3) -> str:
    if c["n"] == 0 or math.isnan(c["mean"]):
        return "–"
    s = f"{scale * c['mean']:.{digits}f}"
    return s + (f" ± {scale * c['half']:.{digits}f}" if not math.isnan(c["half"]) else "")


def lds_cell(c: dict, label: str) -> str:
    return f"{c[f'lds_{label}']:.3f}" if f"lds_{label}" in c else "not measured (run stopped)"


def table(payload: dict) -> str:
    s, cfg = payload["summary"], payload["config"]
    lines = ["# Memorisation by sign, selective removal, fewer-parameter influence", "",
             f"Generated by `{cfg['command']}` on {cfg['machine']['cores']} shared CPU cores (other jobs running: "
             "wall times are under contention). Mean ± 95 % t-interval over seeds "
             f"{cfg['seeds']}. Training subset: {cfg['n_train']} of the 60,000 training images (seeded per seed), "
             f"clean validation split (held-out set V) {cfg.get('n_val', N_VAL)} for (a) and (b), full 10,000-image "
             f"test split; MLP 784→{HIDDEN}→10 tanh, Adam, {cfg['epochs']} epochs, wd {WD}. Selective removal scores "
             f"each round on a copy with its last layer refit by L-BFGS: {cfg.get('refit', False)}. "
             f"Data: {cfg['provenance']}.", "",
             "## (b) Test accuracy (%) after selective removal, random removal of the same counts, and none", "",
             "| data | noise | none | selective | random | sel − none | sel − random | removed | flipped among removed | "
             "sample-passes sel/none | clean labels only (ceiling) | ceiling − none |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s:
        lines.append(f"| {r['dataset']} | {int(100 * r['noise'])} % | {fmt(r['acc_none'], 100, 2)} | "
                     f"{fmt(r['acc_selective'], 100, 2)} | {fmt(r['acc_random'], 100, 2)} | "
                     f"{fmt(r['sel_minus_none'], 100, 2)} | {fmt(r['sel_minus_random'], 100, 2)} | "
                     f"{fmt(r['removed'], 1, 0)} | {fmt(r['removed_flipped_fraction'], 1, 2)} | "
                     f"{fmt(r['passes_selective_over_none'], 1, 2)} | {fmt(r['acc_clean_only'], 100, 2)} | "
                     f"{fmt(r['clean_minus_none'], 100, 2)} |")
    lines += ["", "## Targets (issue 7), computed from the rows above", ""]
    for r in s:
        if r["noise"] == 0.2:
            for k, lab in (("sel_minus_none", "over none"), ("sel_minus_random", "over random")):
                c = r[k]
                ok = "met" if 100 * c["mean"] >= 2 else "MISSED"
                lines.append(f"- {r['dataset']}, 20 % noise, selective removal {lab}: {fmt(c, 100, 2)} points "
                             f"(target ≥ 2): {ok}")
            c = r["clean_minus_none"]
            lines.append(f"- {r['dataset']}, 20 % noise, the ceiling (training on the clean labels only) over none: "
                         f"{fmt(c, 100, 2)} points")
    measured = [m for m in MEASUREMENTS if s and f"{m}_precision" in s[0]]
    for r in s:
        if r["noise"] in (0.1, 0.2):
            cells = []
            for m in measured:
                c = r[f"{m}_precision"]
                cells.append(f"{m} {fmt(c, 1, 2)} ({'met' if c['mean'] >= 0.8 else 'MISSED'})")
            lines.append(f"- {r['dataset']}, {int(100 * r['noise'])} % noise, memorised precision (target ≥ 0.8) by "
                         f"measurement: {'; '.join(cells)}")
    lines += ["", "## (a) \"Memorised\" (aggregate ≤ 0) against the flipped labels, and self-influence at the same count",
              "", "| data | noise | measurement | # memorised | precision | recall | self-infl. precision | "
              "self-infl. recall | AUROC −aggregate | AUROC self-infl. |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in s:
        for m in [m for m in ("margin", "prob", "loss") if m in measured]:
            self_p = fmt(r["self_precision"], 1, 2) if m == "loss" else "(see loss row)"
            self_r = fmt(r["self_recall"], 1, 2) if m == "loss" else ""
            lines.append(f"| {r['dataset']} | {int(100 * r['noise'])} % | {m} | {fmt(r[f'{m}_count'], 1, 0)} | "
                         f"{fmt(r[f'{m}_precision'], 1, 2)} | {fmt(r[f'{m}_recall'], 1, 2)} | {self_p} | {self_r} | "
                         f"{fmt(r[f'auc_{m}:minus_aggregate'], 1, 3)} | "
                         f"{fmt(r['auc_loss:self_influence'], 1, 3) if m == 'loss' else ''} |")
    lines += ["", "Self-influence is ranked from the last-layer influence of the same model; it takes the top k "
              "points with k = the number the loss sign rule calls memorised. At 0 % noise nothing is flipped: "
              "precision and recall are undefined (–) and the count is the number of clean points called memorised. "
              "The loss measurement weighs held-out points by their loss, so a few confidently wrong held-out points "
              "dominate its aggregate (compare its 0 % noise count with the margin's); the margin (classification "
              "influence) weighs every held-out point alike, and the probability p_y (score_prob = p_y · score_loss "
              "per held-out point) weighs the held-out points the model gets right most. All three are PAPERS.md "
              "§4's rule M1 (S_V ≤ 0, self-influence > 0); they differ only in f. log p_y is the loss with the "
              "sign turned, so its row would repeat the loss row.",
              "", "## (c) Last-layer vs full-parameter influence (seed 0, 20 % noise, model at ‖∇R‖ ≈ 0)", "",
              "| data | n train | P last / full | Spearman per query | Spearman aggregate | sign agreement | "
              "LDS last | LDS full | time last (s) | time full (s) | speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in payload.get("fewer_parameters", []):
        if "error" in c:
            lines.append(f"| {c['dataset']} | error: {c['error']} |||||||||| ")
            continue
        lines.append(f"| {c['dataset']} | {c['n_train']} | {c['params_last']} / {c['params_full']} | "
                     f"{c['spearman_per_query_mean']:.3f} | {c['spearman_aggregate']:.3f} | "
                     f"{c['sign_agreement_aggregate']:.3f} | {lds_cell(c, 'last')} | {lds_cell(c, 'full')} | "
                     f"{c['seconds_last']:.1f} | {c['seconds_full']:.1f} | {c['speedup']:.1f}× |")
    lines += ["", "Part (c) aggregates over a validation split of 1,000. LDS over " + str(cfg.get("lds_subsets")) + " random half-subsets, retrained by Newton-CG "
              "(influent.eval.lds); full influence: GGN + CG, last layer: exact last-layer GGN (= its Hessian), "
              "direct solve; both damping = wd. Why they differ: docs/fewer_parameters.md.", ""]
    return "\n".join(lines)


def plots(payload: dict, prefix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = payload["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, name in zip(axes, DATASETS):
        rs = [r for r in s if r["dataset"] == name]
        x = range(len(rs))
        bars = (("acc_none", "none"), ("acc_selective", "selective"), ("acc_random", "random"),
                ("acc_clean_only", "clean labels only"))
        for j, (k, lab) in enumerate(bars):
            ax.bar([i + 0.2 * (j - 1.5) for i in x], [100 * r[k]["mean"] for r in rs], 0.2,
                   yerr=[100 * (0 if math.isnan(r[k]["half"]) else r[k]["half"]) for r in rs], label=lab, capsize=2)
        ax.set_xticks(list(x), [f"{int(100 * r['noise'])} % noise" for r in rs])
        lo = min([100 * r[k]["mean"] for r in rs for k in ("acc_none", "acc_selective", "acc_random")] or [0])
        ax.set_ylim(max(0, lo - 5), 100)
        ax.set_title(name)
        ax.set_ylabel("test accuracy (%)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{prefix}_removal.png", dpi=120)
    plt.close(fig)


def provenance() -> str:
    from influent.data import IDX_SETS

    return "; ".join(f"{k}: {v[2]}" for k, v in IDX_SETS.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, 20 %% noise, 1,000 training points, 10 epochs")
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--n-val", type=int, default=N_VAL, help="held-out reference set V of parts a and b")
    ap.add_argument("--no-refit", action="store_true", help="selective removal scores the Adam model as it is")
    ap.add_argument("--fewer-n", type=int, default=1000, help="training points for (c)")
    ap.add_argument("--lds-m", type=int, default=20, help="LDS subsets for (c)")
    ap.add_argument("--merge", action="store_true", help="combine the results of --parts ab and --parts c runs")
    ap.add_argument("--parts", default="abc", help="which parts to run: a/b (memorisation, removal) and/or c")
    args = ap.parse_args()
    noises = (0.2,) if args.quick else (0.0, 0.1, 0.2)
    seeds = list(range(1 if args.quick else args.seeds))
    n_train = 1000 if args.quick else args.n_train
    epochs = 10 if args.quick else EPOCHS
    fewer_n, lds_m = (300, 10) if args.quick else (args.fewer_n, args.lds_m)
    prefix = "memorization_quick" if args.quick else "memorization"
    if args.merge:
        return merge(prefix)
    part_name = prefix if args.parts == "abc" else f"{prefix}_{args.parts}"
    jobs = [(name, noise, seed, n_train, epochs, prefix if seed == 0 else None, args.n_val, not args.no_refit)
            for name in DATASETS for noise in noises for seed in seeds] if set("ab") & set(args.parts) else []
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        futs = [pool.submit(fewer_parameters, name, fewer_n, 50, lds_m, epochs) for name in DATASETS] \
            if "c" in args.parts else []  # submitted first: the longest jobs
        rows = list(pool.map(run_config, *zip(*jobs))) if jobs else []
        fewer = []
        if futs:
            for name, f in zip(DATASETS, futs):
                try:
                    fewer.append(f.result())
                except Exception as e:  # reported in the table, never hidden
                    fewer.append({"dataset": name, "error": f"{type(e).__name__}: {e}"[:200]})
    cfg = {"command": "python benchmarks/memorization.py " + " ".join(sys.argv[1:]), "machine": machine(),
           "seeds": seeds, "noises": noises, "n_train": n_train, "epochs": epochs, "hidden": HIDDEN, "wd": WD,
           "lr": LR, "batch_size": BATCH, "caps": CAPS, "n_val": args.n_val, "refit": not args.no_refit,
           "provenance": provenance(),
           "fewer_n": fewer_n, "lds_subsets": lds_m, "wall_seconds": time.perf_counter() - t0}
    payload = {"config": cfg, "summary": summarise(rows), "rows": rows, "fewer_parameters": fewer}
    if args.parts != "abc":  # a partial run: kept for --merge, which writes the full results
        (RESULTS / f"{part_name}.json").write_text(json.dumps(payload, indent=2))
        return
    write(prefix, payload, table(payload))
    plots(payload, prefix)


def merge(prefix: str) -> None:
    """Combine the partial runs (--parts ab, --parts c) into the one results file."""
    ab = json.loads((RESULTS / f"{prefix}_ab.json").read_text())
    path = RESULTS / f"{prefix}_c.json"
    if path.exists():
        c = json.loads(path.read_text())
        ab["fewer_parameters"] = c["fewer_parameters"]
        for k in ("fewer_n", "lds_subsets"):
            ab["config"][k] = c["config"][k]
        ab["config"]["command"] += " ; " + c["config"]["command"]
        ab["config"]["wall_seconds_c"] = c["config"]["wall_seconds"]
    else:  # the (c) run did not finish: whatever each data set's run had written so far
        parts = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("memorization_c_*.json"))]
        ab["fewer_parameters"] = parts
        ab["config"]["fewer_parameters_note"] = "partial: the (c) run was stopped before it finished"
        if parts:
            ab["config"]["fewer_n"], ab["config"]["lds_subsets"] = parts[0]["n_train"], parts[0]["lds_subsets"]
    for r in ab["rows"]:  # precision is undefined without flipped labels (runs before pr() said so gave 0)
        if r["n_flipped"] == 0:
            for m in r["memorisation"].values():
                for k in ("sign", "self_influence_same_k"):
                    if k in m:
                        m[k]["precision"] = float("nan")
    ab["summary"] = summarise(ab["rows"])
    write(prefix, ab, table(ab))
    plots(ab, prefix)


if __name__ == "__main__":
    main()
