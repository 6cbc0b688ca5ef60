"""The ``alb`` command line.

Each sub-command is a thin shell: it parses arguments and hands over to the
package that owns the behaviour. Commands that later issues deliver are not
listed until they exist, so ``alb --help`` never advertises a stub.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="alb",
    help="Async-Load Bridge: a production control plane for Ollama.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def sim(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Fleet file (YAML) describing the simulated daemons and models.",
        ),
    ],
    host: Annotated[str, typer.Option(help="Address every daemon listens on.")] = "127.0.0.1",
) -> None:
    """Run a simulated Ollama fleet: one HTTP daemon per entry in the fleet file."""
    from ollamasim.cli import serve_fleet

    serve_fleet(config, host=host)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Listen address (default ALB_HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Listen port (default ALB_PORT or 8080).")
    ] = None,
    sim_fallback: Annotated[
        bool,
        typer.Option(
            "--sim-fallback",
            help="Serve an in-process simulated fleet when no daemon is configured "
            "and nothing answers at the default Ollama address.",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes on one port (default ALB_WORKERS or 1); more than one "
            "needs ALB_REDIS_URL: the workers coordinate as replicas.",
        ),
    ] = None,
) -> None:
    """Run the bridge in front of the Ollama daemons (ALB_DAEMONS or OLLAMA_HOST)."""
    import os

    from alb.simfleet import serve as serve_fleet_or_daemons
    from bridge.http.server import serve as run_server
    from bridge.settings import SettingsError, load_settings

    try:
        settings = load_settings(
            host=host,
            port=port,
            sim_fallback=True if sim_fallback else None,
            workers=workers,
        )
    except SettingsError as exc:
        typer.echo(f"alb serve: {exc}", err=True)
        raise typer.Exit(2) from None
    if settings.workers > 1 and settings.worker_index < 0:
        if settings.redis_url is None:
            typer.echo(
                "alb serve: --workers needs ALB_REDIS_URL (the workers share the daemons "
                "through it; `make run-cluster` starts a local Redis)",
                err=True,
            )
            raise typer.Exit(2)
        if settings.port == 0:
            typer.echo("alb serve: --workers needs a fixed --port (they share it)", err=True)
            raise typer.Exit(2)
        from alb.workers import supervise

        raise typer.Exit(supervise(settings, sim_fallback=sim_fallback))
    explicit = bool(settings.daemons) or "OLLAMA_HOST" in os.environ
    run_server(serve_fleet_or_daemons(settings, explicit_upstream=explicit))


@app.command()
def predictor(
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Log level.")] = "info",
) -> None:
    """Run the Faust predictor worker (settings from ALB_PREDICTOR_* variables)."""
    from predictor.stream.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(f"alb predictor: {exc}", err=True)
        raise typer.Exit(2) from None
    from predictor.stream.app import run_worker

    run_worker(settings, loglevel=loglevel)


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the synthetic trace.")] = 7,
    duration: Annotated[
        float, typer.Option(help="Simulated seconds of traffic (replayed 10x faster).")
    ] = 240.0,
    out: Annotated[Path, typer.Option(help="Where to write the PNG.")] = Path("var/alb-demo.png"),
) -> None:
    """Replay a synthetic trace straight at a simulated Ollama fleet, then through the
    bridge (embedded predictor on), and compare: a table and a PNG."""
    from alb.demo import main

    code = main(seed, duration, out)
    if code:
        raise typer.Exit(code)


@app.command()
def doctor() -> None:
    """Check the daemons, NVML, Kafka, Redis and the settings; one line per finding with
    its fix; exit 1 on a problem (the settings are alb serve's: ALB_*, OLLAMA_HOST)."""
    from alb.doctor import main
    from bridge.settings import SettingsError, load_settings

    try:
        # What alb serve would refuse is reported here, not raised.
        settings = load_settings(allow_open="true")
    except SettingsError as exc:
        typer.echo(f"FAIL  settings: {exc}", err=True)
        raise typer.Exit(1) from None
    code = main(settings)
    if code:
        raise typer.Exit(code)


@app.command()
def dashboard(
    out: Annotated[
        Path | None, typer.Option(help="Write the JSON here (default: standard output).")
    ] = None,
    check: Annotated[
        bool, typer.Option(help="Exit 1 when --out differs from what the code makes now.")
    ] = False,
) -> None:
    """The Grafana dashboard (infra/grafana/alb.json), generated from alb/dashboard.py."""
    from alb.dashboard import render

    text = render()
    if out is None:
        sys.stdout.write(text)
        return
    if check:
        if not out.exists() or out.read_text() != text:
            typer.echo(f"{out} is out of date: run `alb dashboard --out {out}`", err=True)
            raise typer.Exit(1)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def _mount_subcommands() -> None:
    # Sub-apps own their commands; their heavy imports happen inside the commands.
    from alb.keys_cli import keys_app
    from ingest.cli import replay_app, topics_app
    from predictor.cli import trace_app
    from replay.cli import register_replay_eval_commands

    register_replay_eval_commands(replay_app)

    app.add_typer(trace_app, name="trace")
    app.add_typer(topics_app, name="topics")
    app.add_typer(replay_app, name="replay")
    app.add_typer(keys_app, name="keys")


_mount_subcommands()


@app.callback()
def _main() -> None:
    """Async-Load Bridge: a production control plane for Ollama."""


if __name__ == "__main__":  # pragma: no cover
    app()
