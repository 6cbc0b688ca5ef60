"""The ``alb`` command line: what it advertises and how it refuses bad input."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bridge.cli import app

runner = CliRunner()


def test_help_lists_the_commands_that_exist() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "sim" in result.output


def test_sim_refuses_a_missing_fleet_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = runner.invoke(app, ["sim", "--config", str(missing)])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert "Traceback" not in result.output


def test_help_lists_serve() -> None:
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--sim-fallback" in result.output
    assert "--port" in result.output
