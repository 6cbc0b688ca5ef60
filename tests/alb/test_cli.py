"""The ``alb`` command line: what it advertises and how it refuses bad input."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from alb.cli import app

runner = CliRunner()


def test_help_lists_the_commands_that_exist() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("sim", "serve", "trace"):
        assert command in result.output


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


def test_trace_synth_writes_a_seeded_trace(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    args = ["trace", "synth", "--output", str(out), "--seed", "3", "--duration", "600"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines
    again = tmp_path / "again.jsonl"
    args[3] = str(again)
    assert runner.invoke(app, args).exit_code == 0
    assert again.read_text().splitlines() == lines
