"""``alb replay evaluate | sweep | capacity | send``: thin shells over :mod:`replay`.

``replay_eval_app`` holds the four commands; :func:`register_replay_eval_commands` adds
them to another Typer group (the bridge mounts them into ``alb replay`` beside
``export`` / ``import``). Heavy imports happen inside the commands.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register_replay_eval_commands", "replay_eval_app"]

TraceOpt = Annotated[
    Path, typer.Option("--trace", exists=True, dir_okay=False, help="JSONL trace (trace.v1).")
]
FleetOpt = Annotated[
    Path,
    typer.Option("--fleet", exists=True, dir_okay=False, help="Fleet file (as alb sim --config)."),
]
LimitOpt = Annotated[int | None, typer.Option(help="Replay only the first N requests.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Predictor setting override, NAME=VALUE (repeatable)."),
]


def _overrides(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--set")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


def evaluate(
    *,
    trace: TraceOpt,
    fleet: FleetOpt,
    policy: Annotated[
        str, typer.Option(help="ollama, bridge-lru, seed, histogram, ours, or 'all'.")
    ] = "all",
    limit: LimitOpt = None,
    set_: SetOpt = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the reports as JSON here.")
    ] = None,
) -> None:
    """Replay a trace through the discrete-event simulation and print the metrics."""
    from predictor.core.config import ConfigError  # noqa: PLC0415
    from replay.fleets import load_fleet  # noqa: PLC0415
    from replay.policies import POLICIES, policy_named  # noqa: PLC0415
    from replay.report import markdown_table  # noqa: PLC0415
    from replay.simulate import simulate  # noqa: PLC0415
    from replay.workload import load_requests  # noqa: PLC0415

    names = list(POLICIES) if policy == "all" else [p.strip() for p in policy.split(",")]
    changes = _overrides(set_)
    try:
        specs = []
        for name in names:
            spec = policy_named(name)
            if changes and spec.predictor is not None:
                spec = policy_named(name, spec.predictor.replace(**changes))
            specs.append(spec)
    except (ValueError, ConfigError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    requests = load_requests(trace, limit)
    fleet_cfg = load_fleet(fleet)
    reports = [simulate(fleet_cfg, s, requests) for s in specs]
    typer.echo(f"{len(requests)} requests from {trace}; fleet {fleet}")
    typer.echo(markdown_table(reports))
    if json_out is not None:
        json_out.write_text(json.dumps([r.as_dict() for r in reports], indent=1))


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def sweep(
    *,
    trace: TraceOpt,
    fleet: FleetOpt,
    out: Annotated[Path, typer.Option(help="Directory for sweep.csv, sweep.md, *.png.")],
    policy: Annotated[str, typer.Option(help="Base policy (its predictor is varied).")] = "ours",
    windows: Annotated[str, typer.Option(help="Window minutes, comma-separated.")] = "5,10,20",
    thresholds: Annotated[
        str, typer.Option(help="Prefetch confidence thresholds, comma-separated.")
    ] = "0.3,0.5,0.7",
    keep_alive_percentiles: Annotated[
        str, typer.Option(help="Histogram keep-alive (tail) percentiles, comma-separated.")
    ] = "0.95,0.99",
    limit: LimitOpt = None,
) -> None:
    """Run a parameter grid and write a table and PNG plots."""
    from rich.progress import Progress  # noqa: PLC0415

    from replay.fleets import load_fleet  # noqa: PLC0415
    from replay.policies import policy_named  # noqa: PLC0415
    from replay.sweep import run_sweep, write_sweep  # noqa: PLC0415
    from replay.workload import load_requests  # noqa: PLC0415

    try:
        spec = policy_named(policy)
        grid = (
            [int(w) for w in _floats(windows)],
            _floats(thresholds),
            _floats(keep_alive_percentiles),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    requests = load_requests(trace, limit)
    fleet_cfg = load_fleet(fleet)
    total = len(grid[0]) * len(grid[1]) * len(grid[2])
    with Progress(transient=True) as bar:
        task = bar.add_task("sweep", total=total)
        points = run_sweep(
            fleet_cfg,
            spec,
            requests,
            windows=grid[0],
            thresholds=grid[1],
            tails=grid[2],
            progress=lambda n: bar.advance(task, n),
        )
    for path in write_sweep(points, out):
        typer.echo(f"wrote {path}")


def send(
    *,
    trace: TraceOpt,
    url: Annotated[str, typer.Option(help="Base URL of the bridge.")] = "http://127.0.0.1:8080",
    speed: Annotated[float, typer.Option(help="Time scale: 2 = twice as fast.")] = 1.0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at most.")] = 32,
    limit: LimitOpt = None,
    timeout: Annotated[float, typer.Option(help="Per-request timeout, seconds.")] = 300.0,
) -> None:
    """Replay a trace against a live bridge with time scaling and a progress bar."""
    from rich.progress import Progress  # noqa: PLC0415

    from predictor.traces.format import TraceRecord, read_trace  # noqa: PLC0415
    from replay.send import send_trace  # noqa: PLC0415

    if speed <= 0 or concurrency < 1:
        raise typer.BadParameter("--speed must be > 0 and --concurrency >= 1")
    records: list[TraceRecord] = []
    for rec in read_trace(trace):
        if limit is not None and len(records) >= limit:
            break
        records.append(rec)
    records.sort(key=lambda r: r.ts)
    with Progress() as bar:
        task = bar.add_task(f"send -> {url}", total=len(records))
        report = asyncio.run(
            send_trace(
                records,
                url,
                speed=speed,
                concurrency=concurrency,
                timeout_s=timeout,
                progress=lambda n: bar.advance(task, n),
            )
        )
    typer.echo(json.dumps(report.summary()))


replay_eval_app = typer.Typer(
    name="replay",
    help="Evaluate policies on replayed traces; send a trace to a live bridge.",
    no_args_is_help=True,
    add_completion=False,
)


def _sizes(text: str) -> list[int]:
    sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    if not sizes or sizes[0] < 1:
        raise typer.BadParameter("fleet sizes are daemon counts >= 1", param_hint="--sizes")
    return sizes


def capacity(
    *,
    fleet: FleetOpt,
    out: Annotated[Path, typer.Option(help="Directory for capacity.csv/.md and the PNGs.")],
    trace: Annotated[
        Path | None,
        typer.Option("--trace", exists=True, dir_okay=False, help="JSONL trace (trace.v1)."),
    ] = None,
    synth_seeds: Annotated[
        str | None, typer.Option(help="Synthetic traces instead: seeds, e.g. 1-12 or 1,3.")
    ] = None,
    sessions_per_minute: Annotated[float, typer.Option(help="Synthetic traces' rate.")] = 5.0,
    sizes: Annotated[str, typer.Option(help="Daemon counts, comma-separated.")] = "3,4,6,8,12,16",
    policy: Annotated[
        str, typer.Option(help="Policies, comma-separated, or 'all' (the seven).")
    ] = "all",
    slo: Annotated[float, typer.Option(help="The TTFT SLO in seconds.")] = 5.0,
    pareto: Annotated[bool, typer.Option(help="Also the reclaim mode's Pareto curve.")] = True,
    jobs: Annotated[int, typer.Option(help="Processes to spread the replays over.")] = 1,
    limit: LimitOpt = None,
) -> None:
    """Every policy over a range of fleet sizes: SLO attainment, cold starts, GPUs needed."""
    from rich.progress import Progress  # noqa: PLC0415

    from predictor.traces.synth import SynthParams, synthesize  # noqa: PLC0415
    from replay.capacity import (  # noqa: PLC0415
        pareto_grid,
        run_capacity,
        smallest_fleet,
        summarise,
        write_capacity,
    )
    from replay.fleets import load_fleet, with_daemons  # noqa: PLC0415
    from replay.policies import POLICIES, policy_named  # noqa: PLC0415
    from replay.simulate import simulate  # noqa: PLC0415
    from replay.workload import load_requests, requests_from_records  # noqa: PLC0415

    if (trace is None) == (synth_seeds is None):
        raise typer.BadParameter("give either --trace or --synth-seeds")
    try:
        specs = (
            list(POLICIES.values())
            if policy == "all"
            else [policy_named(p.strip()) for p in policy.split(",")]
        )
        counts = _sizes(sizes)
        seeds = [] if synth_seeds is None else _seed_list(synth_seeds)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    traces = (
        {trace.stem: load_requests(trace, limit)}
        if trace is not None
        else {
            f"seed {n}": requests_from_records(
                synthesize(SynthParams(seed=n, sessions_per_minute=sessions_per_minute))
            )[:limit]
            for n in seeds
        }
    )
    base = load_fleet(fleet)
    with Progress() as bar:
        task = bar.add_task("capacity", total=len(traces) * len(counts) * len(specs))
        runs = run_capacity(
            base, specs, traces, counts, slo_s=slo, jobs=jobs,
            progress=lambda n: bar.advance(task, n),
        )  # fmt: skip
    points: list[Any] = []
    note = ""
    if pareto and "ours" in POLICIES:
        summaries = summarise(runs)
        at = smallest_fleet(summaries, "ollama", 0.95)
        n = at if at is not None else counts[-1]
        note = (
            f"{n} GPUs, where Ollama's default first reaches 95 % attainment"
            if at is not None
            else f"{n} GPUs (the largest: Ollama's default never reaches 95 % in the sweep)"
        )
        grid = [POLICIES["ours"], *pareto_grid(POLICIES["ours"])]
        first = next(iter(traces.values()))
        fleet_n = with_daemons(base, n)
        with Progress() as bar:
            task = bar.add_task("pareto", total=len(grid))
            for spec in grid:
                points.append((spec.name, simulate(fleet_n, spec, first, slo_s=slo)))
                bar.advance(task, 1)
        note += f"; trace {next(iter(traces))}"
    for path in write_capacity(runs, out, slo_s=slo, pareto=points, pareto_note=note):
        typer.echo(f"wrote {path}")


def _seed_list(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",") if s.strip()]


def register_replay_eval_commands(app: typer.Typer) -> None:
    """Add ``evaluate``, ``sweep`` and ``send`` to ``app`` (the ``alb replay`` group)."""
    app.command("evaluate")(evaluate)
    app.command("sweep")(sweep)
    app.command("capacity")(capacity)
    app.command("send")(send)


register_replay_eval_commands(replay_eval_app)
