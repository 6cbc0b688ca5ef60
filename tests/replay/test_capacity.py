"""``alb replay capacity``: the fleet-size sweep, its summary and its files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replay.capacity import (
    Summary,
    frontier,
    markdown,
    pareto_grid,
    run_capacity,
    smallest_fleet,
    summarise,
    write_capacity,
)
from replay.fleets import make_fleet, with_daemons
from replay.policies import POLICIES
from replay.report import ReplayReport, percentile, percentile_all
from replay.workload import Request

NAMES = [f"m{i}" for i in range(6)]


def _burst() -> list[Request]:
    # Two popular models asked for at once, then the others: more daemons, less waiting.
    reqs = [Request(i, i * 0.2, f"m{i % 2}:latest", "s", 200, 100, None, False) for i in range(60)]
    reqs += [
        Request(60 + i, 20.0 + i, f"m{i % 6}:latest", "s", 200, 100, None, False) for i in range(12)
    ]
    return reqs


def test_with_daemons_copies_the_first_daemons_kind() -> None:
    fleet = with_daemons(make_fleet(NAMES, daemons=1), 4)
    assert [d.name for d in fleet.daemons] == ["gpu0", "gpu1", "gpu2", "gpu3"]
    assert len({(d.memory, d.num_parallel, d.max_runners) for d in fleet.daemons}) == 1
    with pytest.raises(ValueError, match="at least one"):
        with_daemons(fleet, 0)


def test_the_sweep_reports_every_policy_and_size_and_the_smallest_fleet(tmp_path: Path) -> None:
    fleet = make_fleet(NAMES, daemons=1)
    specs = [POLICIES["ollama"], POLICIES["bridge-lru"]]
    runs = run_capacity(fleet, specs, {"burst": _burst()}, [1, 2, 4], slo_s=5.0, jobs=1)
    assert [(r.daemons, r.policy) for r in runs] == [
        (n, p) for n in (1, 2, 4) for p in ("ollama", "bridge-lru")
    ]
    summaries = summarise(runs)
    lru = {s.daemons: s for s in summaries if s.policy == "bridge-lru"}
    # More GPUs, no less attainment; the GPU-hours count the daemons.
    assert lru[1].slo_attainment <= lru[2].slo_attainment <= lru[4].slo_attainment
    for r in runs:
        assert r.gpu_hours == pytest.approx(r.daemons * r.report.horizon_s / 3600)
    assert lru[4].replicas > 0  # the burst was spread over copies
    reached = smallest_fleet(summaries, "bridge-lru", lru[4].slo_attainment)
    assert reached is not None
    assert reached <= 4
    assert smallest_fleet(summaries, "bridge-lru", 1.01) is None
    text = markdown(summaries, 5.0)
    assert "not within the sweep" in text
    assert "| bridge-lru |" in text
    paths = write_capacity(runs, tmp_path, slo_s=5.0)
    assert sorted(p.name for p in paths) == ["capacity.csv", "capacity.md", "capacity.png"]
    assert (tmp_path / "capacity.csv").read_text().count("\n") == len(runs) + 1


def test_a_tail_over_every_request_counts_the_refused_as_never_answered() -> None:
    served = [float(i) for i in range(1, 101)]  # 1 .. 100 s
    assert percentile(served, 99) == 99.0
    # One refused in 101: the 99th percentile (rank 100) is still served, at 100 s.
    assert percentile_all(served, 1, 99) == 100.0
    # Two refused in 102: rank 101 is one of them, never answered.
    assert percentile_all(served, 2, 99) is None
    assert percentile_all([], 0, 99) == 0.0
    # In the tables a tail that is never answered says so.
    refused = dataclasses.replace(_summary(), p99_ttft_all_s=None)
    text = markdown([_summary(), dataclasses.replace(refused, policy="b")], 5.0)
    row = next(line for line in text.splitlines() if line.startswith("| b |") and "never" in line)
    assert row == "| b | never |"


def _summary() -> Summary:
    return Summary(
        policy="a",
        daemons=1,
        cold_start_rate=0.0,
        cold_ready_copy_rate=0.0,
        cold_first_rate=0.0,
        cold_gone_rate=0.0,
        cold_context_rate=0.0,
        truncated_rate=0.0,
        p50_ttft_s=1.0,
        p95_ttft_s=5.0,
        p99_ttft_s=9.0,
        p99_ttft_all_s=12.0,
        slo_attainment=0.5,
        refused=0,
        loads=0,
        replicas=0,
        idle_gb_h=0.0,
        gpu_hours=1.0,
    )


def test_the_reclaim_grid_and_its_frontier() -> None:
    grid = pareto_grid(POLICIES["ours"], keep_alive_caps=(60.0, 600.0), unload_below=(0.0, 0.2))
    assert len(grid) == 4
    assert all(g.reclaim == "idle" for g in grid)
    assert {g.idle_unload_after_s for g in grid} == {60.0, 600.0}

    def rep(cold: float, idle: float) -> ReplayReport:
        base = run_capacity(make_fleet(NAMES, daemons=1), [POLICIES["ollama"]],
                            {"t": _burst()[:3]}, [1])[0].report  # fmt: skip
        return base.__class__(**{**base.as_dict(), "cold_start_rate": cold, "idle_gb_h": idle})

    points = [
        ("a", rep(0.1, 10.0)),
        ("b", rep(0.2, 5.0)),
        ("c", rep(0.3, 6.0)),
        ("d", rep(0.1, 10.0)),
    ]
    assert [name for name, _ in frontier(points)] == ["a", "b"]  # c is beaten; d repeats a


def test_the_cli_refuses_a_bad_sweep_in_one_line(tmp_path: Path) -> None:
    from alb.cli import app  # noqa: PLC0415

    runner = CliRunner()
    fleet = Path("replay/fleets/synth-3x24.yaml")
    result = runner.invoke(
        app, ["replay", "capacity", "--fleet", str(fleet), "--out", str(tmp_path),
              "--synth-seeds", "1", "--sizes", "0"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "fleet sizes are daemon counts" in result.output
    result = runner.invoke(
        app, ["replay", "capacity", "--fleet", str(fleet), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "either --trace or --synth-seeds" in result.output
