"""``alb demo`` end to end, shrunk: a short trace replayed directly and through the
bridge (a real ``alb serve`` subprocess) against fresh simulated fleets."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from alb.cli import app
from alb.demo import predictor_config, trace
from predictor.core.config import PredictorConfig

runner = CliRunner()


def test_a_tiny_demo_prints_both_rows_and_writes_the_png(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "demo.png"
    result = runner.invoke(app, ["demo", "--seed", "5", "--duration", "45", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["Ollama direct", "via the bridge"]
    for row in rows:
        cells = [c.strip() for c in row.split("│")[2:-1]]
        assert int(cells[0]) > 0  # requests
        assert cells[1] == "0"  # errors
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {out.resolve()}" in result.output.replace("\n", "")


def test_bad_options_fail_in_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--duration", "5"])
    assert result.exit_code == 2
    assert "--duration must be between" in result.output
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "x.txt")])
    assert result.exit_code == 2
    assert "must name a .png file" in result.output
    assert "Traceback" not in result.output


def test_the_trace_is_seeded_and_the_predictor_runs_ten_times_faster() -> None:
    assert trace(5, 120) == trace(5, 120)
    assert trace(5, 120) != trace(6, 120)
    fast, base = predictor_config(), PredictorConfig.recommended()
    assert fast.cooldown_s == base.cooldown_s / 10
    assert fast.reuse_horizon_s == base.reuse_horizon_s / 10
    assert fast.min_count == base.min_count
    assert fast.reuse_estimate == base.reuse_estimate == "rate"
