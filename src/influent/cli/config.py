"""`influent run` configuration: a TOML file checked key by key; an unknown key names the closest valid one.

    entry = "my_module:problem"        # or "path/to/file.py:problem", relative to the config file
    title = "my model"                 # optional
    out = "runs/my-model"              # optional; --out overrides
    [args]                             # keyword arguments for the entry point
    [attributor]                       # params, curvature, solver, damping, compress, sampler, batch_size, dtype, device, seed
    solver = { name = "arnoldi", rank = 50, iterations = 100 }   # or just "direct"
    [report]                           # top, gallery, max_queries, scores_format
"""
from __future__ import annotations

import difflib
import inspect
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..errors import InputError

TOP_LEVEL = ("entry", "title", "out", "args", "attributor", "report")
ATTRIBUTOR = ("params", "curvature", "solver", "damping", "compress", "sampler", "batch_size", "dtype", "device", "seed")
REPORT = ("top", "gallery", "max_queries", "scores_format")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ConfigError(InputError):
    """A run configuration that cannot be used as written."""


@dataclass
class RunConfig:
    """A checked configuration: `attributor` holds ready-to-pass Attributor options (solver objects built)."""

    path: Path
    text: str
    entry: str
    title: str
    out: str | None
    args: dict = field(default_factory=dict)
    attributor: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


def closest(key: str, valid: Iterable[str]) -> str | None:
    """The valid key most like `key` (difflib), or None when nothing is close."""
    found = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return found[0] if found else None


def check_keys(table: Mapping[str, Any], valid: Iterable[str], where: str, source: str) -> None:
    """Refuse unknown keys, naming the closest valid one and listing the rest."""
    valid = list(valid)
    for key in table:
        if key not in valid:
            guess = closest(key, valid)
            hint = f"; did you mean {guess!r}?" if guess else ""
            section = f" in [{where.rstrip('.')}]" if where else " at the top level"
            listing = f"valid keys{section}: {', '.join(valid)}" if valid else f"no keys are valid{section}"
            raise ConfigError(f"unknown key {where + key!r} in {source}{hint} ({listing})")


def _solver(spec: Any, source: str) -> Any:
    """A solver name, or a table {name = ..., options} built into the configured solver object."""
    from .. import solvers

    if isinstance(spec, str) or spec is None:
        return spec
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(f"attributor.solver in {source} must be a name or a table with a 'name', "
                          'e.g. { name = "arnoldi", rank = 50 }')
    classes = {"direct": solvers.Direct, "cg": solvers.CG, "lissa": solvers.LiSSA, "arnoldi": solvers.Arnoldi,
               "identity": solvers.Identity}
    name = spec["name"]
    if name not in classes:
        guess = closest(str(name), classes)
        raise ConfigError(f"unknown solver {name!r} in {source}" + (f"; did you mean {guess!r}?" if guess else "")
                          + f" (choose one of {', '.join(classes)})")
    cls = classes[name]
    options = {k: v for k, v in spec.items() if k != "name"}
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "progress")]
    check_keys(options, params, "attributor.solver.", source)
    return cls(**options)


def _attributor(table: Mapping[str, Any], source: str) -> dict:
    check_keys(table, ATTRIBUTOR, "attributor.", source)
    out = dict(table)
    if "solver" in out:
        out["solver"] = _solver(out["solver"], source)
    if "dtype" in out:
        if out["dtype"] not in DTYPES:
            guess = closest(str(out["dtype"]), DTYPES)
            raise ConfigError(f"attributor.dtype {out['dtype']!r} in {source} is not one of {', '.join(DTYPES)}"
                              + (f"; did you mean {guess!r}?" if guess else ""))
        out["dtype"] = DTYPES[out["dtype"]]
    if "compress" in out:
        from ..compress import make_compressor
        out["compress"] = make_compressor(out["compress"])
    return out


def load_config(path: str | Path) -> RunConfig:
    """Read and check a run configuration; raises ConfigError (before any work) when something is off."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass the path of a TOML file (see `influent run --help`)")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path.name} is not valid TOML: {e}") from None
    check_keys(data, TOP_LEVEL, "", path.name)
    if "entry" not in data:
        raise ConfigError(f'{path.name} has no entry; add e.g. entry = "my_module:problem" (a function returning '
                          "model, task, train and query)")
    entry = data["entry"]
    if not isinstance(entry, str) or entry.count(":") != 1 or not all(entry.split(":")):
        raise ConfigError(f'entry must look like "module:function" or "file.py:function", got {entry!r}')
    for name in ("args", "attributor", "report"):
        if not isinstance(data.get(name, {}), Mapping):
            raise ConfigError(f"[{name}] in {path.name} must be a table")
    report = dict(data.get("report", {}))
    check_keys(report, REPORT, "report.", path.name)
    return RunConfig(path=path, text=text, entry=entry, title=str(data.get("title", path.stem)), out=data.get("out"),
                     args=dict(data.get("args", {})), attributor=_attributor(data.get("attributor", {}), path.name),
                     report=report, data=data)
