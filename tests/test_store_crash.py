"""SIGKILL a process that is writing a gradient store at chosen points, resume, and get identical rows.

The kill points are the file operations themselves (the N-th `os.replace` or shard write, before
or after it runs), so every interleaving of "data written / renamed / recorded" is exercised
without timing or sleeps.
"""
import json
import signal
import subprocess
import sys

import pytest
import torch

CHILD = r'''
import os, signal, sys, torch
import influent.store as st
from influent.inputs import as_examples
kill_at, when, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
calls = {"n": 0}
def deadly(fn):
    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = fn(*a, **k)
        if calls["n"] == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return wrapped
st.os.replace = deadly(os.replace)
st.save_file = deadly(st.save_file)
rows = torch.arange(23 * 6, dtype=torch.float64).reshape(23, 6).sin()
ex = as_examples((rows,), ids=list(range(100, 123)))
store = st.GradientStore.open(path, config={"k": 6}, fingerprint="f", dim=6, dtype=torch.float64)
st.fill_store(store, ex.ids, ex.batches(4), lambda b: b[0] * 2.0)
'''

EXPECTED = torch.arange(23 * 6, dtype=torch.float64).reshape(23, 6).sin() * 2.0
# each shard costs 3 wrapped calls (save_file, shard rename, manifest rename); 6 shards + creation + completion
TOTAL_CALLS = 1 + 6 * 3 + 1
POINTS = [(k, w) for k in range(1, 22) for w in ("before", "after")]
QUICK = POINTS[1::7]


def _run(path, kill_at, when):
    return subprocess.run([sys.executable, "-c", CHILD, str(kill_at), when, str(path)], capture_output=True, text=True)


def _check_resume(tmp_path, kill_at, when):
    path = tmp_path / "store"
    first = _run(path, kill_at, when)
    expected = -signal.SIGKILL if kill_at <= TOTAL_CALLS else 0
    assert first.returncode == expected, first.stderr
    again = _run(path, 10_000, "never")  # resume with no kill
    assert again.returncode == 0, again.stderr
    from influent.store import GradientStore

    store = GradientStore.open(path)
    assert store.complete and store.ids == list(range(100, 123))
    assert torch.equal(store.read_all(), EXPECTED)
    json.loads((path / "manifest.json").read_text())  # never a half-written manifest


@pytest.mark.parametrize("kill_at,when", QUICK)
def test_kill_and_resume(tmp_path, kill_at, when):
    _check_resume(tmp_path, kill_at, when)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at,when", [p for p in POINTS if p not in QUICK])
def test_kill_and_resume_everywhere(tmp_path, kill_at, when):
    _check_resume(tmp_path, kill_at, when)
