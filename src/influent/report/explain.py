"""Fit, score, collect and write a run's outputs and report in one call; per-stage time and peak memory."""
from __future__ import annotations

import json
import os
import platform
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..progress import stage
from ..task import Task
from .html import write_report
from .record import collect
from .views import Show

_CLEAR_REFS = Path("/proc/self/clear_refs")


def versions() -> dict[str, Any]:
    """Versions, threads and devices: what `influent info` prints and every run saves as versions.json."""
    import matplotlib
    import numpy
    import scipy
    import sklearn

    from .. import __version__
    out: dict[str, Any] = {"influent": __version__, "python": platform.python_version(), "torch": torch.__version__,
                           "numpy": numpy.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
                           "matplotlib": matplotlib.__version__, "platform": platform.platform(),
                           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "torch_interop_threads": torch.get_num_interop_threads(),
                           "cuda": torch.version.cuda if torch.cuda.is_available() else None}
    out["devices"] = ["cpu"] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out["devices"].append("mps")
    return out


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux), so each stage reports its own peak; False where unsupported."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    """Peak resident memory in MB: VmHWM since the last reset on Linux, else the process's high-water mark."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stages:
    """Wall time and peak memory per stage, each shown as a progress spinner; `rows` goes into the report."""

    def __init__(self, progress: bool = False):
        self.progress, self.rows, self.per_stage = progress, [], True

    @contextmanager
    def __call__(self, name: str, detail: str = "") -> Iterator[dict]:
        self.per_stage &= _reset_peak()
        row = {"name": name, "seconds": 0.0, "peak_mb": None, "detail": detail}
        t0 = time.perf_counter()
        with stage(name, self.progress):
            yield row
        row.update(seconds=time.perf_counter() - t0, peak_mb=round(_peak_mb(), 1))
        if torch.cuda.is_available():
            row["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        self.rows.append(row)

    @property
    def memory_note(self) -> str:
        return ("peak resident memory of the process during each stage (Linux VmHWM, reset per stage)"
                if self.per_stage else "peak resident memory of the process up to the end of each stage")


def explain(model: nn.Module, task: Task, train: Any, query: Any, out_dir: str | Path, *,
            attributor: Mapping[str, Any] | Any = None, train_ids: Sequence | None = None,
            query_ids: Sequence | None = None, show: Show | None = None, class_names: Sequence[str] | None = None,
            flagged: torch.Tensor | None = None, top: int = 5, gallery: int = 24, max_queries: int = 16,
            title: str = "influent report", config: Any = None, config_text: str | None = None,
            scores_format: str = "safetensors", progress: bool = False, stages: Stages | None = None,
            store: str | Path | None = None) -> Path:
    """Attribute `query` to `train` and write scores, top-k, versions, timings and report.html into `out_dir`.

    `attributor` is a dict of Attributor options (e.g. {"curvature": "ekfac", "damping": 1e-3}) or a
    configured, unfitted Attributor; `store` a gradient-store folder (a rerun resumes from it). Returns
    the path of report.html.

    Example:
        >>> explain(model, Task.classification(), (Xtr, ytr), (Xq, yq), "out/", attributor={"damping": 1e-3})
    """
    from ..attributor import Attributor

    stages = stages or Stages(progress)
    attr = attributor if isinstance(attributor, Attributor) else \
        Attributor(model, task, **{"progress": progress, **dict(attributor or {})})
    with stages("fit: curvature, solver, training gradients") as row:
        attr.fit(train, ids=train_ids, store=store)
    row["detail"] = " · ".join(f"{k.replace('_', ' ')} {v:.2f} s" for k, v in attr.timings_.items()
                               if k != "fit_total")
    with stages("score queries, self-influence"):
        record = collect(attr, query, query_ids=query_ids, show=show, class_names=class_names, top=top,
                         gallery=gallery, max_queries=max_queries, flagged=flagged, title=title)
    info = versions()
    record.summary.update(stages=stages.rows, memory_note=stages.memory_note, versions=info,
                          config=config if config is not None else attr._config(), config_text=config_text)
    out = Path(out_dir)
    with stage("writing the report", progress):
        record.save(out, scores_format)
        (out / "versions.json").write_text(json.dumps(info, indent=1))
        (out / "timings.json").write_text(json.dumps({"stages": stages.rows, "note": stages.memory_note}, indent=1))
        return write_report(out)
