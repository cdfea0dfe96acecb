"""Issue 9 (4): the memory planner's predicted peak vs the measured peak RSS, per configuration.

Each configuration runs in a fresh process: load data and model, fit an Attributor with a generous
`memory=` budget (so it records its plan), score the queries, and report the planner's predicted
peak next to the process's peak resident set size. Target: within 25 % on each configuration.

    python benchmarks/memory.py            # results/memory.{json,md}
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

CONFIGS = {
    "digits": "MLP 64→32→10 float64, exact Hessian + direct, 1,000 train × 100 queries",
    "mnist": "MLP 784→128→10 float32, all 60,000 train, neuron dropout k = 4096, empirical Fisher + direct, 100 queries",
    "lm": "GPT-2 small (random init) float32, 32 sequences × 128 tokens, Conv1D layers, neuron dropout k = 4096, "
          "empirical Fisher + direct, 4 queries",
}


def run(name: str) -> dict:
    import influent as inf
    from influent.train import mlp

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    if name == "digits":
        from influent.data import load_digits, split

        X, y = load_digits(torch.float64)
        Xtr, ytr, Xq, yq = split(X, y, 1000, 100)
        model, task = mlp([64, 32, 10], dtype=torch.float64), inf.Task.classification()
        attr = inf.Attributor(model, task, curvature="hessian", solver="direct", memory="1TB")
        train, query = (Xtr, ytr), (Xq, yq)
    elif name == "mnist":
        from influent.data import load_mnist

        X, y = load_mnist("train")
        Xt, yt = load_mnist("test")
        model, task = mlp([784, 128, 10]), inf.Task.classification()
        attr = inf.Attributor(model, task, curvature="empirical_fisher", memory="1TB",
                              compress=inf.compress.Dropout(4096, level="neuron"))
        train, query = (X.flatten(1), y), (Xt[:100].flatten(1), yt[:100])
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config()).eval()
        ids = torch.randint(0, 50257, (36, 128), generator=torch.Generator().manual_seed(1))
        attr = inf.Attributor(model, inf.Task.language_modeling(), memory="1TB", batch_size=8,
                              params=[r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)"],
                              curvature="empirical_fisher", compress=inf.compress.Dropout(4096, level="neuron"))
        train, query = {"input_ids": ids[:32]}, {"input_ids": ids[32:]}
    attr.fit(train)
    attr.score(query)
    plan = attr.memory_plan_
    return {"predicted_mb": plan.peak / 2**20, "base_mb": plan.base / 2**20,
            "stages_mb": {k: v / 2**20 for k, v in plan.stages.items()},
            "resident_mb": {k: v / 2**20 for k, v in plan.resident.items()},
            "peak_rss_mb": peak_rss_mb(), "seconds": time.perf_counter() - t0}


def table(res: dict) -> str:
    lines = ["## Memory planner (`python benchmarks/memory.py`)", "",
             "Predicted peak (resident memory when fit starts + largest stage + what stays resident) vs the "
             "process's measured peak RSS. Each configuration in a fresh process; 2 shared cores.", "",
             "| configuration | resident at start (MB) | predicted peak (MB) | measured peak (MB) | error | within 25 % |",
             "|---|---:|---:|---:|---:|---|"]
    for name, r in res["runs"].items():
        if "error" in r:
            lines.append(f"| {CONFIGS[name]} | – | – | – | – | failed: {r['error']} |")
            continue
        err = r["predicted_mb"] / r["peak_rss_mb"] - 1
        lines.append(f"| {CONFIGS[name]} | {r['base_mb']:.0f} | {r['predicted_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{err:+.0%} | {'yes' if abs(err) <= 0.25 else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run(a.one)))
        return
    res = {"machine": machine(), "runs": {c: run_isolated(__file__, ["--one", c], 3600) for c in a.configs}}
    write("memory", res, table(res))


if __name__ == "__main__":
    main()
