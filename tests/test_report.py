"""The HTML report: record round trip, self-contained HTML, and a real render in headless Chromium."""
import base64
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from influent import Attributor, InputError, NotFittedError, Task
from influent.data import load_digits, split
from influent.report import Record, as_image, collect, render, text_show, write_report
from influent.train import fit_lbfgs, mlp

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fitted():
    X, y = load_digits(torch.float64)
    Xtr, ytr, Xq, yq = split(X, y, 60, 3)
    model = mlp([64, 6, 10], dtype=torch.float64)
    task = Task.classification()
    fit_lbfgs(model, task, (Xtr, ytr), weight_decay=1e-2, max_iter=100)
    return Attributor(model, task, damping=1e-2).fit((Xtr, ytr)), (Xq, yq)


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    attr, query = fitted
    flagged = torch.zeros(60, dtype=torch.bool)
    flagged[:6] = True
    rec = collect(attr, query, top=3, gallery=5, flagged=flagged, title="digits <test>")
    rec.summary.update(stages=[{"name": "fit", "seconds": 1.5, "peak_mb": 300.0}], config={"damping": 0.01})
    out = tmp_path_factory.mktemp("report")
    rec.save(out)
    return rec, out, write_report(out)


def test_record_round_trip(saved):
    rec, out, _ = saved
    back = Record.load(out)
    assert torch.allclose(back.scores, rec.scores.float()) and torch.allclose(back.self_influence, rec.self_influence.float())
    assert sorted(back.views) == sorted(rec.views) and back.summary["queries"] == rec.summary["queries"]
    q = back.summary["queries"][0]
    assert q["proponents"][0]["score"] == pytest.approx(float(rec.scores[0].max()))
    assert [e["score"] for e in back.summary["gallery"]] == sorted((e["score"] for e in back.summary["gallery"]),
                                                                   reverse=True)
    assert back.summary["flagged"]["count"] == 6 and 0 <= back.summary["flagged"]["auc"] <= 1


def test_html_is_self_contained(saved):
    _, _, path = saved
    html = path.read_text()
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) >= 3 * (1 + 6) + 5 + 1  # queries with their 6 neighbours, gallery, histogram
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for s in sources)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert not re.search(r"https?:|//[a-z]|url\(|@import|<link|<script", text)
    assert "digits &lt;test&gt;" in html  # user text is escaped
    assert "Curvature spectrum" not in html  # the direct solver has no spectrum to show


def test_text_examples_are_quoted(fitted):
    attr, query = fitted
    show = text_show([f"train <b>{i}</b>" for i in range(60)], ["the query text"] * 3)
    html = render(collect(attr, query, top=2, gallery=3, show=show))
    assert "the query text" in html and "train &lt;b&gt;" in html and html.count('<blockquote class="txt">') >= 3 * 5


@pytest.mark.parametrize("kwargs, error", [
    ({"top": 0}, InputError), ({"gallery": -1}, InputError),
    ({"flagged": torch.zeros(5, dtype=torch.bool)}, InputError),
    ({"show": lambda split, i: {"not": "a view"}}, InputError),
])
def test_collect_refuses_bad_options(fitted, kwargs, error):
    attr, query = fitted
    with pytest.raises(error):
        collect(attr, query, **kwargs)


def test_collect_needs_a_fitted_attributor(fitted):
    attr, query = fitted
    with pytest.raises(NotFittedError):
        collect(Attributor(attr.model, attr.task), query)


@pytest.mark.parametrize("shape, expected", [
    ((64,), (8, 8)), ((1, 28, 28), (28, 28)), ((3, 5, 5), (5, 5, 3)), ((12, 12), (12, 12)), ((10,), None),
    ((2, 4, 4), None),
])
def test_as_image(shape, expected):
    image = as_image(torch.rand(shape) * 4 - 2)
    assert (None if image is None else image.shape) == expected
    if image is not None:
        assert image.min() >= 0 and image.max() <= 1


def _browser():
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def test_report_renders_in_headless_chromium(saved, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium/Chrome installed (`apt-get install -y chromium`); the report was not rendered")
    _, _, path = saved
    # a copy with a probe script (the report itself has none) that records how many images failed to decode
    probe = ("<script>addEventListener('load',()=>{const bad=[...document.images].filter(i=>!i.naturalWidth)"
             ".length;document.body.insertAdjacentHTML('beforeend',`<p id=probe>images=${document.images.length}"
             " broken=${bad}</p>`)})</script>")
    page = tmp_path / "probe.html"
    page.write_text(path.read_text().replace("</body>", probe + "</body>"))
    flags = [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    found = re.search(r"images=(\d+) broken=(\d+)", dom)
    assert found, dom[-2000:]
    assert int(found.group(1)) >= 3 * 7 + 5 + 1 and found.group(2) == "0"
    assert dom.count("<table") >= 3 + 2 and "Proponents" in dom and "Likely mislabels" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, "--window-size=1280,1600", f"--screenshot={shot}", path.as_uri()],
                   capture_output=True, timeout=120)
    from matplotlib.image import imread
    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1280) and np.asarray(pixels).std() > 0.05  # a page was drawn, not a blank
