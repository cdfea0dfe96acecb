"""`influent run CONFIG.toml`: call the config's entry point for model, task and data, then attribute and report."""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from ..report import Stages, explain
from .config import ConfigError, RunConfig, check_keys, closest, load_config

REQUIRED = ("model", "task", "train", "query")
OPTIONAL = ("train_ids", "query_ids", "class_names", "show", "flagged", "title")


def load_entry(entry: str, base: Path) -> Callable:
    """The function named by "module:function" (importable, or a .py path relative to `base`)."""
    module_name, func_name = entry.split(":")
    if module_name.endswith(".py") or "/" in module_name:
        file = (base / module_name).resolve()
        if not file.is_file():
            raise ConfigError(f"entry file {file} not found; paths in entry are relative to the config file")
        spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[file.stem] = module
        spec.loader.exec_module(module)
    else:
        added = [p for p in (str(base.resolve()), str(Path.cwd())) if p not in sys.path]
        sys.path[:0] = added
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                raise ConfigError(f"cannot import {module_name!r} (entry {entry!r}); check the name, or give a path "
                                  f'such as "{module_name.replace(".", "/")}.py:{func_name}"') from None
            raise
        finally:
            for p in added:
                sys.path.remove(p)
    func = getattr(module, func_name, None)
    if not callable(func):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        guess = closest(func_name, names)
        raise ConfigError(f"{module_name} has no function {func_name!r}" + (f"; did you mean {guess!r}?" if guess else ""))
    return func


def check_args(func: Callable, args: Mapping[str, Any], entry: str) -> None:
    """Refuse [args] the entry point does not take, naming the closest parameter."""
    params = inspect.signature(func).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    check_keys(args, [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)],
               "args.", f"the parameters of {entry}")


def check_problem(problem: Any, entry: str) -> dict:
    """What the entry point returned: a mapping with model, task, train, query and optional extras."""
    if not isinstance(problem, Mapping):
        raise ConfigError(f"{entry} returned {type(problem).__name__}; return a dict with keys "
                          f"{', '.join(REQUIRED)} (and optionally {', '.join(OPTIONAL)})")
    check_keys(problem, REQUIRED + OPTIONAL, "", f"what {entry} returned")
    missing = [k for k in REQUIRED if k not in problem]
    if missing:
        raise ConfigError(f"{entry} returned no {', '.join(missing)}; the dict needs {', '.join(REQUIRED)}")
    return dict(problem)


def run_config(path: str | Path, out: str | Path | None = None, progress: bool = True) -> Path:
    """Run a configuration end to end; writes outputs, a copy of the config and the report, returns its path."""
    cfg: RunConfig = load_config(path)
    func = load_entry(cfg.entry, cfg.path.parent)
    check_args(func, cfg.args, cfg.entry)
    stages = Stages(progress)
    with stages(f"entry point {cfg.entry}"):
        problem = check_problem(func(**cfg.args), cfg.entry)
    out_dir = Path(out or cfg.out or Path("influent-report") / cfg.path.stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cfg.path, out_dir / "config.toml")
    extras = {k: problem[k] for k in ("train_ids", "query_ids", "class_names", "show", "flagged") if k in problem}
    return explain(problem["model"], problem["task"], problem["train"], problem["query"], out_dir,
                   attributor=cfg.attributor, title=str(problem.get("title", cfg.title)), config=cfg.data,
                   config_text=cfg.text, progress=progress, stages=stages, **cfg.report, **extras)
