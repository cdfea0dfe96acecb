"""FAISS retrieval of the most influential training examples without recomputing training gradients.

score(q, i) = C(g_q)ᵀ (H + λI)⁻¹ C(g_i) is an inner product between the preconditioned query row
and the (compressed) training row, so the training rows go into a FAISS inner-product index once
and any later query is a top-k search. The query side carries the preconditioning, so the index
does not depend on the damping or the solver. Kinds: "flat" (exact), "ivf" (inverted lists,
`nprobe` lists searched) and "hnsw" (graph). FAISS works in float32.

Approximate kinds search by default through the MIPS-to-L2 reduction (Bachrach et al., 2014): each
row x becomes [x, √(M² − ‖x‖²)] with M the largest row norm and each query [q, 0], so the nearest
row in L2 is the one with the largest inner product. IVF's k-means and HNSW's graph are built for a
metric; on raw inner products (rows of very different norms, as training gradients are) they lose
recall (`mips="ip"` keeps the plain inner-product index, for comparison).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigMismatchError, InputError

KINDS = ("flat", "ivf", "hnsw")


def _faiss():
    try:
        import faiss
    except ImportError as e:  # an optional extra
        raise InputError("influent.index needs FAISS: pip install 'influent[faiss]' (faiss-cpu)") from e
    return faiss


MIPS = ("l2", "ip")


def make_faiss_index(dim: int, kind: str = "flat", n: int | None = None, nlist: int | None = None,
                     M: int = 32, metric: str = "ip"):
    """An empty FAISS index of the given kind (IVF lists default to ~4√n), inner-product or L2 metric."""
    faiss = _faiss()
    if kind not in KINDS:
        raise InputError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "flat":
        return faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    m = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, M, m)
    nlist = nlist or max(1, min(65536, int(4 * math.sqrt(n or 1))))
    quantizer = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    return faiss.IndexIVFFlat(quantizer, dim, nlist, m)


def mips_rows(rows: np.ndarray, max_norm: float) -> np.ndarray:
    """[x, √(M² − ‖x‖²)]: rows whose L2 nearest neighbour to [q, 0] is q's largest inner product."""
    sq = np.maximum(np.float64(max_norm) ** 2 - np.einsum("ij,ij->i", rows, rows, dtype=np.float64), 0.0)
    return np.ascontiguousarray(np.hstack([rows, np.sqrt(sq)[:, None].astype(np.float32)]))


def mips_queries(queries: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.hstack([queries, np.zeros((queries.shape[0], 1), np.float32)]))


def inner_products(distances: np.ndarray, queries: np.ndarray, max_norm: float) -> np.ndarray:
    """Back from squared L2 distances of the reduction to inner products: (‖q‖² + M² − d) / 2."""
    qn = np.einsum("ij,ij->i", queries, queries, dtype=np.float64)[:, None]
    return ((qn + np.float64(max_norm) ** 2 - distances) / 2).astype(np.float32)


def _f32(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())


class GradientIndex:
    """Top-k influence search over an Attributor's training rows.

    Example:
        >>> index = GradientIndex.build(attr, kind="ivf")       # attr fitted, ideally with compress=
        >>> values, ids = index.search(attr, query, k=10)
    """

    def __init__(self, faiss_index: Any, ids: list, fingerprint: dict, kind: str,
                 max_norm: float | None = None) -> None:
        self.index, self.ids, self.fingerprint, self.kind = faiss_index, ids, fingerprint, kind
        self.max_norm = max_norm  # set when the index holds MIPS-reduced rows (L2 metric)

    @classmethod
    def build(cls, attr, kind: str = "flat", nlist: int | None = None, M: int = 32, train_rows: int = 100_000,
              seed: int = 0, mips: str = "l2") -> "GradientIndex":
        """Add every training row of a fitted Attributor (streamed from its cache or store)."""
        if mips not in MIPS:
            raise InputError(f"mips must be one of {', '.join(MIPS)}, got {mips!r}")
        n = attr.n_train_
        dim = attr.compressor_.k_ if attr.compressor_ is not None else attr.space_.numel
        reduce = kind != "flat" and mips == "l2"
        max_norm = max(float(rows.norm(dim=1).max()) for _, rows in attr.training_rows()) if reduce else None
        prep = (lambda r: mips_rows(_f32(r), max_norm)) if reduce else _f32
        index = make_faiss_index(dim + 1 if reduce else dim, kind, n, nlist, M, "l2" if reduce else "ip")
        if kind == "ivf":  # k-means on a seeded sample of rows (one pass), then add every row (a second pass)
            if n < index.nlist:
                raise InputError(f"IVF with nlist={index.nlist} needs at least that many training rows, got {n}; "
                                 "pass a smaller nlist or use kind='flat'")
            pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:train_rows].sort().values
            sample = []
            for offset, rows in attr.training_rows():
                local = pick[(pick >= offset) & (pick < offset + rows.shape[0])] - offset
                sample.append(rows[local])
            index.cp.seed = seed
            index.train(prep(torch.cat(sample)))
        for _, rows in attr.training_rows():
            index.add(prep(rows))
        return cls(index, list(attr.train_ids_), fingerprint_of(attr), kind, max_norm)

    def search(self, attr, query: Any, k: int = 10, ids: Sequence | None = None,
               nprobe: int | None = None, ef_search: int | None = None) -> tuple[Tensor, list[list]]:
        """(scores [n_query, k] float32, training ids per query) of the k highest-scoring training examples."""
        self.check(attr)
        if not isinstance(k, int) or k <= 0:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if nprobe is not None and self.kind == "ivf":
            self.index.nprobe = nprobe
        if ef_search is not None and self.kind == "hnsw":
            self.index.hnsw.efSearch = ef_search
        PQ, _ = attr.preconditioned_queries(query, ids)
        return self.search_rows(PQ, k)

    def search_rows(self, rows: Tensor, k: int) -> tuple[Tensor, list[list]]:
        """Search with already preconditioned query rows."""
        q = _f32(rows)
        if self.max_norm is None:
            D, I = self.index.search(q, min(k, self.index.ntotal))
        else:
            D, I = self.index.search(mips_queries(q), min(k, self.index.ntotal))
            D = inner_products(D, q, self.max_norm)
        return torch.from_numpy(D), [[self.ids[j] for j in row if j >= 0] for row in I]

    def check(self, attr) -> None:
        """Refuse an Attributor whose model, parameters or compressor differ from the index's."""
        now = fingerprint_of(attr)
        diff = [key for key in self.fingerprint if self.fingerprint[key] != now.get(key)]
        if diff:
            raise ConfigMismatchError(f"the index was built for another {', '.join(diff)}; rebuild it with "
                                      "GradientIndex.build(attr) for this Attributor")

    def save(self, path: str | Path) -> None:
        """Write the FAISS index and a JSON sidecar (fingerprint, ids, kind)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index, str(path / "index.faiss"))
        (path / "index.json").write_text(json.dumps({"fingerprint": self.fingerprint, "ids": self.ids,
                                                     "kind": self.kind, "max_norm": self.max_norm}, default=str))

    @classmethod
    def load(cls, path: str | Path, attr=None) -> "GradientIndex":
        """Read an index written by `save`; with `attr`, check that it matches."""
        path = Path(path)
        if not (path / "index.faiss").exists():
            raise InputError(f"no index in {path}; build one with GradientIndex.build(attr).save(path)")
        meta = json.loads((path / "index.json").read_text())
        out = cls(_faiss().read_index(str(path / "index.faiss")), meta["ids"], meta["fingerprint"], meta["kind"],
                  meta.get("max_norm"))
        if attr is not None:
            out.check(attr)
        return out


def fingerprint_of(attr) -> dict:
    """What the training rows depend on: model weights, parameter selection, compressor, task."""
    from .attributor import model_fingerprint

    comp = attr.compressor_.config() if attr.compressor_ is not None else None
    return {"model": model_fingerprint(attr.model, attr.space_), "compressor": json.dumps(comp, default=str,
            sort_keys=True), "task": json.dumps(attr.task.describe(), sort_keys=True), "n_train": attr.n_train_}
