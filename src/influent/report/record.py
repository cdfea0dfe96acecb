"""A run's outputs as one record: scores, self-influence, top-k with what to show, saved to and loaded from a folder.

The folder holds everything `influent report DIR` needs to rebuild the HTML without the model:
record.json (summary), topk.json (plain top-k), scores.safetensors (or .npy) and views.safetensors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, NotFittedError
from ..inputs import as_examples
from .views import Show, check_view, default_show, labels_of

RECORD, TOPK, VIEWS = "record.json", "topk.json", "views.safetensors"
SCORE_FORMATS = ("safetensors", "npy")


@dataclass
class Record:
    """summary: JSON-able facts for the report; scores [n_query, n_train]; self_influence [n_train];
    views: image arrays named in the summary (e.g. "train/17")."""

    summary: dict
    scores: Tensor
    self_influence: Tensor
    views: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, out_dir: str | Path, scores_format: str = "safetensors") -> Path:
        """Write record.json, topk.json, the scores and the views into `out_dir` (created if needed)."""
        from safetensors.numpy import save_file

        if scores_format not in SCORE_FORMATS:
            raise InputError(f"scores format must be one of {', '.join(SCORE_FORMATS)}, got {scores_format!r}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {"scores": _np(self.scores), "self_influence": _np(self.self_influence)}
        if scores_format == "npy":
            for name, a in arrays.items():
                np.save(out / f"{name}.npy", a)
        else:
            save_file(arrays, str(out / "scores.safetensors"))
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.views.items()} or
                  {"_empty": np.zeros(1, np.float32)}, str(out / VIEWS))
        (out / RECORD).write_text(json.dumps({**self.summary, "scores_format": scores_format}, indent=1, default=str))
        (out / TOPK).write_text(json.dumps(plain_top_k(self.summary), indent=1, default=str))
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> "Record":
        """Read a record written by `save`; names the missing file when the folder is not a run's output."""
        from safetensors.numpy import load_file

        out = Path(out_dir)
        if not (out / RECORD).exists():
            raise InputError(f"{out} has no {RECORD}; pass the output folder of `influent run` or `influent demo`")
        summary = json.loads((out / RECORD).read_text())
        if summary.get("scores_format") == "npy":
            arrays = {n: np.load(out / f"{n}.npy") for n in ("scores", "self_influence")}
        else:
            arrays = load_file(str(out / "scores.safetensors"))
        views = load_file(str(out / VIEWS)) if (out / VIEWS).exists() else {}
        views.pop("_empty", None)
        return cls(summary, torch.from_numpy(arrays["scores"]), torch.from_numpy(arrays["self_influence"]), views)


def _np(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().float().numpy())


def plain_top_k(summary: dict) -> list[dict]:
    """The top-k part of a summary without display details: ids, labels, predictions and scores."""
    def row(e: dict) -> dict:
        return {k: e[k] for k in ("id", "label", "score") if k in e}
    return [{"id": q["id"], "label": q["label"], "prediction": q["prediction"],
             "proponents": [row(e) for e in q["proponents"]], "opponents": [row(e) for e in q["opponents"]]}
            for q in summary["queries"]]


def collect(attr: Any, query: Any, *, query_ids: Sequence | None = None, show: Show | None = None,
            class_names: Sequence[str] | None = None, top: int = 5, gallery: int = 24, max_queries: int = 16,
            flagged: Tensor | None = None, title: str = "influent report") -> Record:
    """Score `query` with a fitted Attributor and gather what the report shows: top proponents and opponents
    per query, self-influence with a gallery of its highest points, the spectrum when the solver has one.

    `flagged` is an optional bool mask over training positions (e.g. labels you flipped on purpose);
    the gallery marks them and the summary gives their detection AUC.
    """
    if not hasattr(attr, "solver_") or getattr(attr, "train_examples_", None) is None:
        raise NotFittedError("collect needs an Attributor fitted on in-memory training data: call attr.fit(train)")
    for name, v in (("top", top), ("gallery", gallery), ("max_queries", max_queries)):
        if not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    n_train = attr.n_train_
    if flagged is not None and (not isinstance(flagged, Tensor) or flagged.shape != (n_train,)):
        raise InputError(f"flagged must be a bool tensor of shape ({n_train},), one entry per training example")
    q_examples = as_examples(query, query_ids, "query")
    scores = attr.score(query, ids=query_ids)
    self_inf = attr.self_influence().detach().cpu()
    train_batch = attr.train_examples_.data
    show = show or default_show(train_batch, q_examples.data)
    names = list(class_names) if class_names is not None else None
    train_labels, query_labels = labels_of(train_batch), labels_of(q_examples.data)
    preds = predictions(attr, q_examples.data)
    views: dict[str, np.ndarray] = {}

    def label(labels: list | None, i: int) -> Any:
        return _name(labels[i], names) if labels is not None else None

    def example(split: str, i: int, score: float | None, ids: Sequence, labels: list | None,
                render: bool = True) -> dict:
        e = {"id": ids[i], "position": i, "label": label(labels, i)}
        if score is not None:
            e["score"] = float(score)
        view = check_view(show(split, i), f"{split!r}, {i}") if render else None
        if isinstance(view, str):
            e["text"] = view
        elif view is not None:
            key = f"{split}/{i}"
            views[key], e["image"] = view, key
        return e

    k = min(top, n_train)
    pro_v, pro_i = scores.top_k(k)
    opp_v, opp_i = scores.top_k(k, largest=False)
    queries = []
    for q in range(len(q_examples)):
        shown = q < max_queries  # every query goes to topk.json; the first max_queries get pictures
        entry = example("query", q, None, q_examples.ids, query_labels, shown)
        entry.update(prediction=_name(preds[q], names) if preds is not None else None, shown=shown)
        for side, (vals, idx) in (("proponents", (pro_v, pro_i)), ("opponents", (opp_v, opp_i))):
            entry[side] = [example("train", i, v, attr.train_ids_, train_labels, shown)
                           for v, i in zip(vals[q].tolist(), idx[q].tolist())]
        queries.append(entry)
    g_v, g_i = torch.topk(self_inf, min(gallery, n_train))
    suspects = []
    for v, i in zip(g_v.tolist(), g_i.tolist()):
        e = example("train", i, v, attr.train_ids_, train_labels)
        if flagged is not None:
            e["flagged"] = bool(flagged[i])
        suspects.append(e)
    summary = {"title": title, "n_train": n_train, "n_query": len(q_examples), "top": k,
               "attributor": _jsonable(scores.meta), "queries": queries, "gallery": suspects,
               "spectrum": spectrum(attr), "class_names": names}
    if flagged is not None:
        summary["flagged"] = flagged_summary(self_inf, flagged)
    return Record(summary, scores.values.detach().cpu(), self_inf, views)


def predictions(attr: Any, batch: Any) -> list | None:
    """The model's prediction per query: the arg-max class for classifier logits, the value for one output."""
    try:
        p0 = next(attr.model.parameters())
        data = as_examples(batch, None, "query").to(p0.device, p0.dtype).data
        was_training = attr.model.training
        attr.model.eval()
        with torch.no_grad():
            out = attr.task.forward(attr.model, data)
        attr.model.train(was_training)
    except Exception:  # noqa: BLE001 - a custom forward we cannot call on its own: show no prediction
        return None
    if not isinstance(out, Tensor) or out.dim() == 0:
        return None
    if out.dim() == 2 and out.shape[1] > 1:
        return [int(v) for v in out.argmax(1).tolist()]
    if out.dim() <= 2 and out[0].numel() == 1:
        return [float(v) for v in out.reshape(-1).tolist()]
    return None


def spectrum(attr: Any) -> dict | None:
    """Eigenvalues the solver found (Arnoldi's Ritz values) with the damping, or None."""
    eig = getattr(attr.solver_, "info_", {}).get("eigenvalues")
    if not eig:
        return None
    return {"eigenvalues": [float(e) for e in eig], "damping": float(attr.damping), "solver": attr.solver_.name}


def flagged_summary(self_inf: Tensor, flagged: Tensor) -> dict:
    """How well self-influence ranks the flagged examples first (ROC-AUC and share found in the top 10 %)."""
    from ..eval.mislabel import detection_auc

    out = {"count": int(flagged.sum()), "positions": [int(i) for i in flagged.nonzero().flatten().tolist()]}
    if 0 < out["count"] < flagged.numel():
        out.update(detection_auc(self_inf, flagged))
    return out


def _name(v: Any, names: list[str] | None) -> Any:
    if names is not None and isinstance(v, int) and 0 <= v < len(names):
        return names[v]
    return v


def _jsonable(x: Any) -> Any:
    """Round-trip through JSON so that tensors, dtypes and other objects become plain values or strings."""
    return json.loads(json.dumps(x, default=str))
