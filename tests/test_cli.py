"""`influent demo` and `influent info` end to end on tiny data; errors are one line plus a hint with a meaningful exit code."""
import json

import pytest
from typer.testing import CliRunner

from influent.cli import app


pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args, **kwargs):
    return CliRunner().invoke(app, [*map(str, args)], **kwargs)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = invoke("demo", "--n-train", 80, "--hidden", 4, "--n-queries", 2, "--top", 2, "--flip", 0.1, "--quiet",
                    "--out", out)
    assert result.exit_code == 0, result.output
    return out, result


def test_demo_writes_the_report_and_prints_its_path(demo_out):
    out, result = demo_out
    assert result.output.strip() == f"report: {(out / 'report.html').resolve()}"  # --quiet: the path and nothing else
    topk = json.loads((out / "topk.json").read_text())
    assert len(topk) == 2 and all(len(q["proponents"]) == 2 for q in topk)
    record = json.loads((out / "record.json").read_text())
    assert record["flagged"]["count"] == 8 and record["attributor"]["curvature"]["curvature"] == "hessian"
    assert [s["name"].split()[0] for s in record["stages"]] == ["loading", "training", "fit:", "score"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 * 5 + 1 and "flagged" in html


def test_demo_without_quiet_says_what_it_did(tmp_path):
    result = invoke("demo", "--n-train", 40, "--hidden", 2, "--n-queries", 1, "--top", 1, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "report:" in result.output


@pytest.mark.parametrize("args, code, words", [
    (["demo", "--n-train", 0], 2, "--n-train must be between"),
    (["demo", "--hidden", 0], 2, "must be at least 1"),
    (["demo", "--data", "cifar"], 2, "choose one of digits, mnist, fashion-mnist"),
    (["demo", "--top", 0], 2, "at least 1"),
    (["report", "/nonexistent/folder"], 2, "has no record.json"),
])
def test_errors_are_one_line_plus_a_hint(args, code, words):
    result = invoke(*args)
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert words in lines[0] and lines[1].startswith("hint:") and len(lines) == 2


def test_missing_data_set_exits_3_and_names_the_fix(tmp_path):
    result = invoke("demo", "--data", "mnist", "--quiet", env={"INFLUENT_DATA": str(tmp_path)})
    assert result.exit_code == 3 and "make data" in result.output and "Traceback" not in result.output


def test_info_names_versions_threads_and_devices():
    result = invoke("info")
    assert result.exit_code == 0
    for words in ("influent", "torch", "torch_threads", "devices", "cpu"):
        assert words in result.output


@pytest.mark.slow
def test_demo_on_mnist(mnist, tmp_path):
    result = invoke("demo", "--data", "mnist", "--n-train", 300, "--n-queries", 2, "--quiet", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "Curvature spectrum" in (tmp_path / "report.html").read_text()
