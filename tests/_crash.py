"""Shared crash-test helper: count calls to chosen functions and SIGKILL the process at the N-th one.

A kill point is a call index, not a time, so a seeded choice of N reproduces the same interruption
on every run without sleeps. `tripwire()` patches the targets (and restores them on exit, for the
counting pass in the test process); `child(...)` runs a script in a fresh interpreter with the
tripwire armed, the way a user's run is killed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

TESTS = Path(__file__).resolve().parent

#: (module, attribute) pairs whose calls are kill points: model work, curvature products, store I/O
TARGETS: tuple[tuple[str, str], ...] = (
    ("influent.grads:ModelFunction", "per_example_grads"),
    ("influent.curvature.operator:LinearOperator", "matmat"),
    ("influent.store", "save_file"),
    ("influent.store", "load_file"),
    ("influent.store:os", "replace"),
)


def _owner(spec: str):
    import importlib

    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


@contextmanager
def tripwire(kill_at: int | None = None, log: list | None = None,
             targets: Sequence[tuple[str, str]] = TARGETS) -> Iterator[list]:
    """Count calls to `targets` (appending each target's name to `log`); SIGKILL before call `kill_at`."""
    log = [] if log is None else log
    saved = []
    for spec, name in targets:
        owner = _owner(spec)
        original = getattr(owner, name)

        def wrapped(*a, __f=original, __n=name, **k):
            log.append(__n)
            if kill_at is not None and len(log) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return __f(*a, **k)

        saved.append((owner, name, original))
        setattr(owner, name, wrapped)
    try:
        yield log
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


CHILD = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from _crash import tripwire
import {module} as job
with tripwire(int(sys.argv[1])):
    job.{function}(*sys.argv[2:])
"""


def child(module: str, function: str, kill_at: int, *args: str) -> subprocess.CompletedProcess:
    """Run module.function(*args) in a new interpreter, killed at call `kill_at` (0: never)."""
    code = CHILD.format(tests=str(TESTS), module=module, function=function)
    return subprocess.run([sys.executable, "-c", code, str(kill_at), *map(str, args)], capture_output=True,
                          text=True, cwd=str(TESTS))


def killed(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == -signal.SIGKILL
