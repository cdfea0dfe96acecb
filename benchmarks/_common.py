"""Shared helpers for benchmark scripts: peak memory, rank correlations, JSON + Markdown output."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spearman_rows(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean over rows of the row-wise Spearman, Spearman of the flattened matrices)."""
    from scipy.stats import spearmanr

    rows = [spearmanr(x, y).statistic for x, y in zip(a, b)]
    return float(np.nanmean(rows)), float(spearmanr(a.ravel(), b.ravel()).statistic)


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def run_isolated(script: str, args: list[str], timeout: float) -> dict:
    """Run one configuration in a fresh process (clean peak-RSS); it prints one JSON line last."""
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    res = json.loads(lines[-1]) if lines else {"error": "no result"}
    res["process_seconds"] = time.perf_counter() - t0
    return res


def write(name: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(table)
    print(table)
