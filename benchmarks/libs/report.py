"""The README-ready Markdown tables of benchmarks/vs_libraries.py, and the issue's targets checked on them."""
from __future__ import annotations

# Methods that solve with the exact (damped) Hessian: not "approximate" for the targets.
EXACT = {"influent: hessian+direct (exact)", "pydvl: direct (hessian)", "captum: NaiveInfluenceFunction (full rank)",
         "dattri: IF explicit"}


def _f(x, fmt: str = ".3f") -> str:
    return "–" if x is None or x != x else format(x, fmt)


TIE = 0.005  # results this close to the best count as tied; the fastest of them is the one to beat


def _best(rows: dict, key: str, influent: bool) -> tuple[str, dict] | None:
    """The best approximate method by `key`; among those within TIE of it, the fastest."""
    pool = [(k, r) for k, r in rows.items() if "error" not in r and k not in EXACT
            and k.startswith("influent:") == influent and r.get(key) is not None and r.get(key) == r.get(key)]
    if not pool:
        return None
    top = max(r[key] for _, r in pool)
    return min((kr for kr in pool if kr[1][key] >= top - TIE), key=lambda kr: kr[1]["seconds"])


def _paired(a: dict, b: dict) -> str:
    """'; paired difference a − b over queries: mean ± 95 % t-interval' when both rows kept per-query LDS."""
    import math
    import statistics

    from scipy.stats import t as student

    pa, pb = a.get("lds_per_query"), b.get("lds_per_query")
    if not (pa and pb and len(pa) == len(pb)):
        return ""
    d = [x - y for x, y in zip(pa, pb) if x == x and y == y]
    half = student.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return f"; paired difference over {len(d)} queries {statistics.fmean(d):+.3f} ± {half:.3f} (95 %)"


def targets(task: str, rows: dict) -> list[str]:
    """One line per target of the issue, with the numbers that decide it."""
    key = "auc" if task == "c" else "lds"
    ours, theirs = _best(rows, key, True), _best(rows, key, False)
    if task == "c":
        return [f"- target AUC ≥ 0.99: best influent {ours[0]} = {ours[1]['auc']:.4f} "
                f"({'met' if ours[1]['auc'] >= 0.99 else 'MISSED'})" if ours else "- no influent result"]
    if not (ours and theirs):
        return ["- targets: need influent and at least one other library"]
    (kn, o), (tn, t) = ours, theirs
    lines = []
    if task == "a":
        fast = [(k, r) for k, r in rows.items() if k.startswith("influent:") and k not in EXACT and "error" not in r
                and r.get("lds", -1) >= t["lds"] and r["seconds"] <= t["seconds"] / 3]
        lines.append(f"- best library approximation (the fastest within {TIE} LDS of the best): {tn}, LDS "
                     f"{t['lds']:.3f} in {t['seconds']:.2f} s; influent "
                     f"methods with LDS ≥ it in ≤ 1/3 of its time: "
                     + (", ".join(f"{k.split(': ')[1]} ({r['lds']:.3f}, {r['seconds']:.2f} s)" for k, r in fast)
                        if fast else "none (MISSED)"))
    else:
        ok = [r for k, r in rows.items() if k.startswith("influent:") and "error" not in r]
        top_k, top = max(((k, r) for k, r in rows.items() if not k.startswith("influent:") and "error" not in r),
                         key=lambda kr: kr[1]["lds"])
        lines.append(f"- influent's best {kn}: LDS {o['lds']:.3f} in {o['seconds']:.1f} s; the libraries' best "
                     f"{top_k}: LDS {top['lds']:.3f} in {top['seconds']:.1f} s "
                     f"({'met' if o['lds'] >= top['lds'] else 'MISSED'}){_paired(o, top)}")
        # every library method's (LDS, time) must be dominated: some influent method at least as good, faster
        beaten = [k for k, r in rows.items() if not k.startswith("influent:") and "error" not in r
                  and not any(x["lds"] >= r["lds"] and x["seconds"] < r["seconds"] for x in ok)]
        lines.append("- library methods that no influent method matches on LDS in less time: "
                     + (", ".join(f"{k} ({rows[k]['lds']:.3f} in {rows[k]['seconds']:.1f} s)" for k in beaten)
                        if beaten else "none (met)"))
    return lines


def table(payload: dict) -> str:
    m, v = payload["machine"], payload["versions"]
    lines = ["## influent vs other libraries (`make bench-libs`, or one task: `python benchmarks/vs_libraries.py "
             "--task a|b|c`)", "",
             f"Machine: {m['cores']} CPU cores (each task names its command and the load average when it started), torch "
             f"{m['torch']}, one torch thread per method, "
             + ("all methods one after another in one process (--in-process: peak RSS is that process's running "
                "peak, not per method). " if payload.get("in_process") else
                "each method in its own process (peak RSS is that process's). ")
             + "Versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x) + ". Every column uses "
             "influent's convention (score = g_qᵀ(H + λI)⁻¹g_i, H of the mean loss, λ = weight decay 1e-3, "
             "positive = helpful); benchmarks/libs/ documents each library's conversion.", ""]
    def run_line(result: dict) -> list[str]:
        if "command" not in result:
            return []
        load = result.get("load_average_at_start")
        runs: dict = {}
        for k, r in result["rows"].items():
            if "command" in r:
                runs.setdefault((r["command"], r.get("load_average_at_start")), []).append(k.split(": ")[0])
        if len(runs) > 1:  # rows merged from several runs: name each run and the libraries it measured
            return ["Runs: " + "; ".join(f"`{c}` (load average {_f(la, '.2f')}: {', '.join(dict.fromkeys(libs))})"
                                         for (c, la), libs in runs.items()) + ".", ""]
        return [f"Command: `{result['command']}`; load average at start "
                f"{'not recorded' if load is None else format(load, '.2f')}.", ""]

    if "a" in payload:
        a = payload["a"]
        gt, c, loo = a.get("ground_truth", {}), a.get("ceiling", {}), a.get("loo", {})
        lines += ["### (a) digits, MLP 64→32→10 tanh (2,410 params), float64, 1000 train × 100 queries", "",
                  *run_line(a),
                  f"Ground truth: {loo.get('n_removed')} leave-one-out retrainings ({loo.get('n_stable')} stayed in "
                  f"the local basin) and LDS over m={gt.get('m')} subsets of α={gt.get('alpha')}, all warm-started "
                  f"Newton-CG to ‖∇R‖ < {gt.get('tol')} ({gt.get('unconverged')} unconverged; "
                  f"{_f(gt.get('retrain_seconds'), '.0f')} s of retraining, cached by content hash). LDS noise ceiling (two perturbed retrainings per "
                  f"subset): **{_f(c.get('lds'))}**.", "",
                  "| library | method | seconds | peak RSS MB | Spearman vs exact | LOO Pearson all / stable | LDS |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for k, r in a["rows"].items():
            lib, name = k.split(": ", 1)
            if "error" in r:
                lines.append(f"| {lib} | {name} | – | – | – | – | {r['error'][:80]} |")
            else:
                lines.append(f"| {lib} | {name} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | "
                             f"{_f(r.get('spearman_vs_exact'))} | {_f(r.get('loo_pearson'))} / "
                             f"{_f(r.get('loo_pearson_stable'))} | {_f(r.get('lds'))} |")
        lines += [""] + targets("a", a["rows"]) + [""]
    if "b" in payload:
        b = payload["b"]
        gt, pr = b.get("ground_truth", {}), b["problem"]
        lines += [f"### (b) MNIST, MLP 784→128→10 tanh ({pr['n_params']:,} params), {pr['n_train']:,} train × "
                  f"{pr['n_query']} queries", "", *run_line(b),
                  "" if not gt else (
                      f"Ground truth: LDS over m={gt.get('m')} subsets of α={gt.get('alpha')}, each retrained by the "
                      f"model's own recipe ({gt.get('max_iter')} epochs of seeded minibatch Adam from its "
                      f"initialisation, float64; the batch order seeded per subset), as TRAK and Kronfluence measure "
                      f"LDS on models not trained to an optimum; {_f(gt.get('retrain_seconds'), '.0f')} s of retraining. "
                      f"LDS noise ceiling (each subset trained twice with two batch orders): "
                      f"**{_f(b.get('ceiling', {}).get('lds'))}**." if gt.get("method") == "adam" else
                      f"Ground truth: LDS over m={gt.get('m')} subsets of α={gt.get('alpha')}, each retrained "
                      f"warm-started from θ* with at most {gt.get('max_iter')} full-batch {gt.get('method')} "
                      f"iterations ({gt.get('unconverged')} stopped above ‖∇R‖ = 10·{gt.get('tol')}; "
                      f"{_f(gt.get('retrain_seconds'), '.0f')} s)."), "",
                  *([f"Note: {b['note']}.", ""] if b.get("note") else []),
                  "| library | method | seconds | peak RSS MB | LDS |", "|---|---|---:|---:|---:|"]
        for k, r in b["rows"].items():
            lib, name = k.split(": ", 1)
            lines.append(f"| {lib} | {name} | – | – | {r['error'][:80]} |" if "error" in r else
                         f"| {lib} | {name} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {_f(r.get('lds'))} |")
        lines += [""] + targets("b", b["rows"]) + [""]
    if "c" in payload:
        c = payload["c"]
        pr = c["problem"]
        lines += [f"### (c) mislabel detection, MNIST {pr['n_train']:,} train with 10 % flipped labels, same MLP", "",
                  *run_line(c),
                  "Ranking by each method's self-influence g_iᵀ(H + λI)⁻¹g_i (libraries without a self-influence "
                  "entry point are absent: pyDVL, TRAK, dattri).", "",
                  "| library | method | seconds | peak RSS MB | AUC | flipped found in top 10 % |",
                  "|---|---|---:|---:|---:|---:|"]
        for k, r in c["rows"].items():
            lib, name = k.split(": ", 1)
            lines.append(f"| {lib} | {name} | – | – | {r['error'][:80]} | – |" if "error" in r else
                         f"| {lib} | {name} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['auc']:.4f} | "
                         f"{r['found_top10pct']:.3f} |")
        lines += [""] + targets("c", c["rows"]) + [""]
    return "\n".join(lines) + "\n"
