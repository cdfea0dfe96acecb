"""Gradient store: row blocks of (compressed) training gradients on disk, with a JSON manifest.

Layout of a store directory:
    manifest.json            config, model fingerprint, dim, dtype, ids, shards (file, rows, sha256)
    shard-00000.safetensors  one tensor "rows" [b, dim] per shard

Writes are crash-safe: a shard is written under a temporary name, fsynced and renamed, and only
then recorded in the manifest (itself replaced atomically), so a killed writer leaves either a
complete shard listed in the manifest or nothing; reopening resumes after the last listed row.
Reads verify each shard's sha256 against the manifest, so a corrupted shard is never used.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import ConfigMismatchError, InfluentError, InputError
from .finite import all_finite

MANIFEST = "manifest.json"
FORMAT = 1


class CorruptStoreError(InfluentError):
    """A shard on disk does not match its checksum, or the manifest is unreadable."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class GradientStore:
    """An append-only, resumable store of gradient rows with ids; read back in blocks."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = Path(path), manifest

    # ----- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, config: dict | None = None, fingerprint: str | None = None,
             dim: int | None = None, dtype: torch.dtype = torch.float32) -> "GradientStore":
        """Open a store, creating it if absent. A store made under another config/model is refused."""
        path = Path(path)
        man_path = path / MANIFEST
        if man_path.exists():
            try:
                manifest = json.loads(man_path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise CorruptStoreError(f"{man_path} is unreadable ({e}); delete the store and recompute") from e
            store = cls(path, manifest)
            store._check(config, fingerprint, dim)
            return store
        if dim is None or config is None or fingerprint is None:
            raise InputError(f"no gradient store at {path}; pass config, fingerprint and dim to create one")
        path.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "config": config, "fingerprint": fingerprint, "dim": int(dim),
                    "dtype": str(dtype).replace("torch.", ""), "ids": [], "shards": [], "complete": False}
        store = cls(path, manifest)
        store._save_manifest()
        return store

    def _check(self, config: dict | None, fingerprint: str | None, dim: int | None) -> None:
        m = self.manifest
        if fingerprint is not None and m["fingerprint"] != fingerprint:
            raise ConfigMismatchError(f"the store at {self.path} was written for a different model (fingerprint "
                                      f"{m['fingerprint'][:12]}… ≠ {fingerprint[:12]}…); use a new directory or delete it")
        if config is not None and m["config"] != json.loads(json.dumps(config)):
            diff = sorted(k for k in set(m["config"]) | set(config) if m["config"].get(k) != config.get(k))
            raise ConfigMismatchError(f"the store at {self.path} was written with another configuration "
                                      f"(differs in {', '.join(diff)}); use a new directory or delete it")
        if dim is not None and m["dim"] != dim:
            raise ConfigMismatchError(f"the store at {self.path} holds rows of width {m['dim']}, not {dim}")

    def _save_manifest(self) -> None:
        _atomic_write(self.path / MANIFEST, json.dumps(self.manifest, indent=1).encode())

    # ----- writing -------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return len(self.manifest["ids"])

    @property
    def ids(self) -> list:
        return list(self.manifest["ids"])

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.manifest["dtype"])

    def append(self, ids: Sequence, rows: Tensor) -> None:
        """Write one shard of rows [b, dim] with their ids (crash-safe, then recorded)."""
        if rows.dim() != 2 or rows.shape[1] != self.manifest["dim"] or rows.shape[0] != len(ids):
            raise InputError(f"rows must be [{len(ids)}, {self.manifest['dim']}], got {tuple(rows.shape)}")
        if not all_finite(rows):
            raise InputError("refusing to store NaN/Inf gradient rows; check the model and the data")
        index = len(self.manifest["shards"])
        name = f"shard-{index:05d}.safetensors"
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        save_file({"rows": rows.detach().to(self.dtype).cpu().contiguous()}, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path / name)
        self.manifest["shards"].append({"file": name, "rows": [self.n_rows, self.n_rows + len(ids)],
                                        "sha256": _sha256(self.path / name)})
        self.manifest["ids"].extend(list(ids))
        self._save_manifest()

    def mark_complete(self) -> None:
        self.manifest["complete"] = True
        self._save_manifest()

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    # ----- reading -------------------------------------------------------------------------
    def blocks(self, verify: bool = True) -> Iterator[tuple[int, Tensor]]:
        """(offset, rows) per shard, in order; each shard's checksum verified before use."""
        for shard in self.manifest["shards"]:
            file = self.path / shard["file"]
            if not file.exists():
                raise CorruptStoreError(f"shard {file} listed in the manifest is missing; delete the store and recompute")
            if verify and _sha256(file) != shard["sha256"]:
                raise CorruptStoreError(f"shard {file} does not match its checksum (corrupted or truncated); "
                                        "delete it and its manifest entry, or the whole store, and recompute")
            yield shard["rows"][0], load_file(str(file))["rows"]

    def read_all(self) -> Tensor:
        """Every row [n, dim] (for stores that fit in memory)."""
        parts = [rows for _, rows in self.blocks()]
        return torch.cat(parts) if parts else torch.zeros(0, self.manifest["dim"], dtype=self.dtype)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "rows": self.n_rows, "dim": self.manifest["dim"],
                "shards": len(self.manifest["shards"]), "complete": self.complete}


def fill_store(store: GradientStore, ids: Sequence, batches: Iterator[tuple[list, Any]], compute_rows,
               progress: bool = False) -> GradientStore:
    """Append compute_rows(batch) for every batch not yet stored, then mark the store complete.

    `batches` yields (ids, batch) in a fixed order, one shard per batch. A store interrupted
    earlier resumes after its last complete shard; its ids must be a prefix of `ids`.
    """
    from .progress import track

    done = store.n_rows
    if list(ids[:done]) != store.ids:
        raise ConfigMismatchError(f"the store at {store.path} holds other examples (or another order) than the "
                                  "data given; use a new directory or delete it")
    seen = 0
    for batch_ids, batch in track(batches, None, "storing gradients", progress):
        end = seen + len(batch_ids)
        if end <= done:
            seen = end
            continue
        if seen < done:
            raise InputError(f"the store at {store.path} ends inside a batch (row {done}); resume with the "
                             "batch size it was written with")
        store.append(batch_ids, compute_rows(batch))
        seen = end
    if seen != len(ids):
        raise InputError(f"the batches covered {seen} examples, not {len(ids)}")
    store.mark_complete()
    return store
