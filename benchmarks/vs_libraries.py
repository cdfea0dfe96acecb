"""influent next to Kronfluence, pyDVL, Captum, TRAK and dattri, on the same tasks and conventions.

(a) digits, MLP 64→32→10 tanh, float64, wd 1e-3, 1000 train × 100 queries (benchmarks/solvers.py's
    setup): every method; wall time, peak RSS, Spearman vs exact, LOO Pearson (100 removals), LDS,
    LDS noise ceiling.
(b) MNIST 60k, MLP 784→128→10 tanh (101,770 params), 100 queries: LDS and time of the methods that scale.
(c) MNIST 60k with 10 % flipped labels, same MLP: mislabel-detection AUC of each method's self-influence.

Each method runs in its own process (its own peak RSS, timed after imports and a warm-up); every
adapter in benchmarks/libs/ returns influent's score convention. A library that does not import is
skipped with the reason. Ground truth comes from influent.eval (cached under .cache/vs-libraries).

Usage: python benchmarks/vs_libraries.py [--task a|b|c|all] [--quick] [--libs influent kronfluence ...]
Run it in .venv-libs (see benchmarks/requirements-libs.txt) to include the other libraries.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, run_isolated, spearman_rows, write  # noqa: E402
from libs import LIBRARIES, Problem, adapter, missing  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "vs-libraries"
WD = 1e-3
# Ground truth: (a) exact retraining to a strict optimum (m=50 subsets, 100 removals); (b) the MNIST
# model's own recipe (5 epochs of seeded Adam from its initialisation) rerun on each subset, as
# TRAK / Kronfluence measure LDS for models that are not trained to an optimum.
MNIST_SIZES = [784, 128, 10]
MNIST_EPOCHS = {False: 5, True: 1}
GT = {"a": dict(loo=100, m=50, alpha=0.5, method="newton_cg", tol=1e-10, max_iter=100),
      "b": dict(m=50, alpha=0.5, method="adam", tol=1.0, max_iter=MNIST_EPOCHS[False], from_init=True)}
QUICK_GT = {"a": dict(loo=20, m=10, alpha=0.5, method="newton_cg", tol=1e-10, max_iter=100),
            "b": dict(m=10, alpha=0.5, method="adam", tol=1.0, max_iter=MNIST_EPOCHS[True], from_init=True)}


# ----- problems ---------------------------------------------------------------------------------
def _mnist(n_query: int, flip: float):
    """MNIST flattened to 784, float32: (train, query, flipped mask or None)."""
    import torch

    from influent.data import load_mnist
    from influent.eval import flip_labels

    X, y = load_mnist("train")
    Xq, yq = load_mnist("test")
    X, Xq = X.reshape(len(X), -1), Xq.reshape(len(Xq), -1)
    q = torch.randperm(len(yq), generator=torch.Generator().manual_seed(0))[:n_query]
    mask = None
    if flip:
        y, mask = flip_labels(y, flip, 10, seed=0)
    return (X, y), (Xq[q], yq[q]), mask


def _train_mnist(train, path: Path, quick: bool):
    """Adam on mean CE + (wd/2)‖θ‖², float32 minibatches of 128, seeded (influent.train.fit_adam,
    the recipe the ground truth of (b) reruns on each subset); cached by path.

    A few epochs, not a strict optimum, as such models are trained in practice."""
    import torch

    import influent as inf
    from influent.train import fit_adam, mlp

    model = mlp(MNIST_SIZES, seed=0)
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    fit_adam(model, inf.Task.classification(), train, WD, epochs=MNIST_EPOCHS[quick], batch_size=128, lr=1e-3, seed=0)
    torch.save(model.state_dict(), path)
    return model.eval()


def problem(task: str, quick: bool, workdir: Path) -> tuple[Problem, object]:
    """The Problem for a task (trained model cached under CACHE) and, for (c), the flipped mask."""
    import torch

    CACHE.mkdir(parents=True, exist_ok=True)
    if task == "a":
        from solvers import build

        model, train, query = build("digits", CACHE)
        return Problem("digits", model, train, query, WD, workdir, batch_size=250), None
    train, query, mask = _mnist(100, 0.1 if task == "c" else 0.0)
    if quick:  # a 6k slice keeps --quick a smoke test
        keep = torch.arange(6000)
        train, mask = (train[0][keep], train[1][keep]), (mask[keep] if mask is not None else None)
    name = f"mnist-{task}{'-quick' if quick else ''}"
    model = _train_mnist(train, CACHE / f"{name}.pt", quick)
    return Problem(name, model, train, query, WD, workdir, batch_size=500), mask


def method_table(task: str, libs: list[str], quick: bool) -> dict[str, list[str]]:
    """Library -> method names for a task ('small' methods on digits, scalable ones on MNIST);
    --quick leaves out each adapter's SLOW methods (minutes each even on a quiet machine)."""
    scale = "small" if task == "a" else "large"
    out = {}
    for lib in libs:
        mod = adapter(lib)
        names = list((mod.self_methods if task == "c" else mod.methods)(scale))
        out[lib] = [n for n in names if not (quick and n in getattr(mod, "SLOW", ()))]
    return out


# ----- one method in its own process --------------------------------------------------------------
def run_one(task: str, lib: str, name: str, quick: bool, out: Path, threads: int) -> dict:
    import importlib
    import tempfile
    import warnings

    import torch

    from libs import IMPORT_NAMES
    from solvers import warm_up

    torch.set_num_threads(threads)
    p, _ = problem(task, quick, Path(tempfile.mkdtemp(prefix=f"vs-{lib}-")))
    mod = adapter(lib)
    fn = (mod.self_methods if task == "c" else mod.methods)("small" if task == "a" else "large")[name]
    importlib.import_module(IMPORT_NAMES[lib])
    warm_up()  # torch.func / dynamo imports are paid before the clock starts, for every library alike
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = fn(p)
    seconds = time.perf_counter() - t0
    v = values.double().numpy()
    if not np.isfinite(v).all():
        return {"error": f"{int((~np.isfinite(v)).sum())} non-finite scores"}
    np.save(out, v)
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


# ----- ground truth ------------------------------------------------------------------------------
def ground_truth(task: str, p: Problem, quick: bool, workers: int, part: str = "all") -> dict:
    """LOO (task a), LDS subsets' outcomes and the noise ceiling (task a), from influent.eval."""
    import torch

    import influent as inf
    from influent.eval import Retrainer, leave_one_out, noise_ceiling, random_subsets

    from influent.train import mlp

    gt = (QUICK_GT if quick else GT)[task]
    opts = dict(method=gt["method"], tol=gt["tol"], max_iter=gt["max_iter"], cache_dir=CACHE / "retrain",
                workers=workers, progress=True)
    init = mlp(MNIST_SIZES, seed=0).state_dict() if gt.get("from_init") else None
    t_task = inf.Task.classification()
    rt = Retrainer(p.model, t_task, p.train, WD, **opts, **({"warm_start": False, "init_state": init} if init else {}))
    # the ceiling: each subset retrained twice, by noise around θ* (a) or by two batch orders from the init (b)
    ceiling_opts = {**opts, **({"init_states": (init, init)} if init else {})}
    out: dict = {"options": gt, "retrainer": rt}
    t0 = time.perf_counter()
    if part == "ceiling":  # only fill the cache with the ceiling's retrainings (run beside a full run)
        noise_ceiling(p.model, t_task, p.train, p.query, WD, m=gt["m"], alpha=gt["alpha"], **ceiling_opts)
        return out
    rt.fit_many(list(random_subsets(p.n, gt["m"], gt["alpha"], 0)), description="LDS retraining")  # cached for lds()
    if task == "a":
        removed = torch.randperm(p.n, generator=torch.Generator().manual_seed(1))[: gt["loo"]].tolist()
        out["loo"] = leave_one_out(p.model, t_task, p.train, p.query, removed, WD, retrainer=rt)
    out["ceiling"] = noise_ceiling(p.model, t_task, p.train, p.query, WD, m=gt["m"], alpha=gt["alpha"], **ceiling_opts)
    # a rerun reads the retrainings from the cache: report the time of the run that computed them
    record = CACHE / f"ground-truth-{task}{'-quick' if quick else ''}.json"
    previous = json.loads(record.read_text())["retrain_seconds"] if record.exists() else 0.0
    out["retrain_seconds"] = max(time.perf_counter() - t0, previous)
    record.write_text(json.dumps({"retrain_seconds": out["retrain_seconds"]}))
    return out


def evaluate(task: str, p: Problem, gt: dict, values: np.ndarray, exact: np.ndarray | None, mask) -> dict:
    import torch

    import influent as inf
    from influent.eval import detection_auc, lds

    if task == "c":
        return detection_auc(torch.as_tensor(values), mask)
    o = gt["options"]
    res = lds(torch.as_tensor(values), p.model, inf.Task.classification(), p.train, p.query, WD, m=o["m"],
              alpha=o["alpha"], retrainer=gt["retrainer"])
    row = {"lds": res.value, "lds_per_query_sd": float(np.nanstd(res.per_query.numpy())),
           "lds_per_query": [round(float(x), 6) for x in res.per_query]}  # for paired comparisons
    if task == "a":
        row["spearman_vs_exact"], _ = spearman_rows(values, exact)
        r = gt["loo"].pearson(torch.as_tensor(values))
        row.update(loo_pearson=r["all"], loo_pearson_stable=r["stable"], loo_n_stable=r["n_stable"])
    return row


# ----- driver ------------------------------------------------------------------------------------
def run_task(task: str, args) -> dict:
    import tempfile

    libs = [lib for lib in args.libs if not _skip(lib)]
    table = method_table(task, libs, args.quick)
    p, mask = problem(task, args.quick, Path(tempfile.mkdtemp(prefix="vs-parent-")))
    results: dict = {"rows": {}, "problem": {"name": p.name, "n_train": p.n, "n_query": len(p.query[1]),
                                             "n_params": p.n_params, "weight_decay": WD}}
    scratch = CACHE / f"scores-{p.name}"
    scratch.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for lib in libs:  # time every method first (own process each), then retrain, then evaluate
        for name in table[lib]:
            out = scratch / f"{lib}-{len(outputs)}.npy"
            one = ["--one", task, lib, name, str(out), str(args.threads)] + (["--quick"] if args.quick else [])
            res = in_process(one) if args.in_process else run_isolated(__file__, one, args.timeout)
            results["rows"][f"{lib}: {name}"], outputs[f"{lib}: {name}"] = res, out
            print(task, lib, name, res, flush=True)
    gt = ground_truth(task, p, args.quick, args.workers) if task != "c" else {}
    exact = None
    for key, res in results["rows"].items():
        if "error" not in res:
            values = np.load(outputs[key])
            if task == "a" and exact is None:
                exact = values  # influent's hessian+direct comes first: the reference
            res.update(evaluate(task, p, gt, values, exact, mask))
            print(task, key, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}, flush=True)
    if gt:
        c = gt["ceiling"]
        results["ceiling"] = {"lds": c.value, "per_query_sd": float(np.nanstd(c.per_query.numpy()))}
    if task == "a":
        loo = gt["loo"]
        results["loo"] = {"n_removed": len(loo.removed), "n_stable": int((~loo.unstable).sum()),
                          "max_grad_norm": float(loo.grad_norms.max())}
    if gt:
        results["ground_truth"] = {**gt["options"], "retrain_seconds": gt["retrain_seconds"],
                                   "unconverged": len(gt["retrainer"].unconverged_)}
    return results


def in_process(one: list[str]) -> dict:
    """run_one in this process (no start-up cost; peak RSS is then this process's running peak)."""
    try:
        return run_one(one[1], one[2], one[3], "--quick" in one, Path(one[4]), int(one[5]))
    except Exception as e:  # a library failing on this task is a row, not the end of the run
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:250] if str(e) else ''}"}


def _skip(lib: str) -> bool:
    reason = missing(lib)
    if reason:
        print(f"skipping {reason}", flush=True)
    return reason is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["a", "b", "c", "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="small ground truth (and a 6k MNIST slice): a smoke test")
    ap.add_argument("--libs", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per method")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per method process")
    ap.add_argument("--workers", type=int, default=1, help="retraining processes for the ground truth")
    ap.add_argument("--merge", action="store_true",
                    help="keep the saved rows of libraries not run this time (e.g. rerun only --libs influent)")
    ap.add_argument("--in-process", action="store_true",
                    help="run methods in this process (faster start; peak RSS no longer per method)")
    ap.add_argument("--ground-truth-only", choices=["all", "ceiling"], help="fill the retraining cache and stop")
    ap.add_argument("--one", nargs=5, metavar=("TASK", "LIB", "METHOD", "OUT", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        task, lib, name, out, threads = args.one
        print(json.dumps(run_one(task, lib, name, args.quick, Path(out), int(threads))))
        return
    tasks = ["a", "b", "c"] if args.task == "all" else [args.task]
    if args.ground_truth_only:
        import tempfile
        for task in [t for t in tasks if t != "c"]:
            gt = ground_truth(task, problem(task, args.quick, Path(tempfile.mkdtemp()))[0], args.quick, args.workers,
                              args.ground_truth_only)
            print(task, {k: v for k, v in gt.items() if k in ("options", "retrain_seconds")}, flush=True)
        return
    name = "vs_libraries" + ("_quick" if args.quick else "")
    path = Path(__file__).resolve().parent / "results" / f"{name}.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    found = versions()  # a --merge run from influent's own venv sees no other library: keep the saved versions
    kept = {**found, **payload.get("versions", {}), "influent": found.get("influent")} if args.merge else found
    payload.update({"machine": machine(), "in_process": args.in_process, "command": " ".join(["python benchmarks/vs_libraries.py", *sys.argv[1:]]),
                    "versions": kept})
    for task in tasks:
        load = os.getloadavg()[0]
        result = run_task(task, args)
        result.update(command=payload["command"], load_average_at_start=load)
        for row in result["rows"].values():  # rows kept by a later --merge still name the run that measured them
            row.update(command=payload["command"], load_average_at_start=load)
        saved = (json.loads(path.read_text()) if path.exists() else {}).get(task)
        if args.merge and saved:  # other libraries' rows from the saved run, in LIBRARIES order
            rows = {**{k: r for k, r in saved["rows"].items() if k.split(": ")[0] not in args.libs}, **result["rows"]}
            order = sorted(rows, key=lambda k: LIBRARIES.index(k.split(": ")[0]))
            result["rows"] = {k: rows[k] for k in order}
            result["command"] += " (the other rows: see each row's run below)"
            if saved.get("note"):  # a hand-written note on the kept rows (e.g. paired differences) stays
                result["note"] = saved["note"]
        from libs.report import table
        payload = {**(json.loads(path.read_text()) if path.exists() else {}), **payload, task: result}
        write(name, payload, table(payload))  # re-read first: runs of other tasks may have written meanwhile


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "numpy", "influent", "kronfluence", "pydvl", "captum", "traker", "dattri"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


if __name__ == "__main__":
    main()
