"""The command line end to end on tiny data."""
from typer.testing import CliRunner

from influent.cli import app


def test_demo_prints_proponents_and_opponents():
    result = CliRunner().invoke(app, ["demo", "--n-train", "150", "--n-queries", "2", "--top", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.count("proponent") == 4 and result.output.count("opponent") == 4
    assert "highest self-influence" in result.output


def test_bad_option_value_is_one_line_not_a_traceback():
    result = CliRunner().invoke(app, ["demo", "--n-train", "0", "--quiet"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "error:" in result.output


def test_info_names_versions():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0 and "influent" in result.output and "torch" in result.output
