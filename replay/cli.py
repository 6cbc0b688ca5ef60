"""``alb replay evaluate | sweep | send``: thin shells over :mod:`replay`.

``replay_eval_app`` holds the three commands; :func:`register_replay_eval_commands` adds
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


def register_replay_eval_commands(app: typer.Typer) -> None:
    """Add ``evaluate``, ``sweep`` and ``send`` to ``app`` (the ``alb replay`` group)."""
    app.command("evaluate")(evaluate)
    app.command("sweep")(sweep)
    app.command("send")(send)


register_replay_eval_commands(replay_eval_app)
