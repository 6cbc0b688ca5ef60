"""``alb topics create|describe`` and ``alb replay export|import``: thin shells.

Mounted by ``alb/cli.py``: ``topics_app`` as ``alb topics``, and the replay
commands added to the ``alb replay`` group with ``register_replay_commands``
(the predictor adds ``evaluate`` / ``sweep`` / ``send`` to the same group).
Heavy imports (aiokafka, rich) happen inside the commands so ``alb --help`` stays fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ingest.topics import TopicState

_BOOTSTRAP_HELP = "Kafka bootstrap servers (host:port[,host:port...])."
Bootstrap = Annotated[
    str, typer.Option("--bootstrap", envvar="ALB_KAFKA_BOOTSTRAP_SERVERS", help=_BOOTSTRAP_HELP)
]

topics_app = typer.Typer(
    name="topics",
    help="Create and inspect the bridge's Kafka topics (partitions, retention, cleanup).",
    no_args_is_help=True,
    add_completion=False,
)


@topics_app.command("create")
def topics_create(
    bootstrap: Bootstrap,
    replication_factor: Annotated[
        int | None,
        typer.Option(min=1, help="Replicas per partition (default: min(3, brokers))."),
    ] = None,
) -> None:
    """Create the missing topics; leave existing ones alone and report how they differ."""
    from ingest.topics import ensure_topics  # noqa: PLC0415

    states = asyncio.run(ensure_topics(bootstrap, replication_factor=replication_factor))
    _print_states(states)


@topics_app.command("describe")
def topics_describe(bootstrap: Bootstrap) -> None:
    """Show each topic's partitions, replication, cleanup, retention; exit 1 if one is missing."""
    from ingest.topics import describe_topics  # noqa: PLC0415

    states = asyncio.run(describe_topics(bootstrap))
    _print_states(states)
    if not all(s.exists for s in states):
        raise typer.Exit(1)


def _print_states(states: list[TopicState]) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table("topic", "partitions", "replication", "cleanup", "retention", "state")
    for state in states:
        retention = state.configs.get("retention.ms")
        hours = f"{int(retention) / 3_600_000:g} h" if retention and retention != "-1" else "-"
        status = (
            "created" if state.created else ("ok" if not state.drift else "; ".join(state.drift))
        )
        table.add_row(
            state.name,
            str(state.partitions or "-"),
            str(state.replication or "-"),
            state.configs.get("cleanup.policy", "-"),
            hours,
            status if state.exists else "missing",
        )
    Console().print(table)


def replay_export(
    *,
    topic: Annotated[str, typer.Option("--topic", help="Topic to read.")],
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="JSONL file to write.")],
    bootstrap: Bootstrap,
) -> None:
    """Write a topic, from its oldest retained record to its current end, to a JSONL file."""
    from rich.progress import Progress  # noqa: PLC0415

    from ingest.replay_io import export_topic  # noqa: PLC0415

    with Progress(transient=False) as bar:
        task = bar.add_task(f"export {topic}", total=None)
        count = asyncio.run(
            export_topic(
                bootstrap,
                topic,
                out,
                on_total=lambda total: bar.update(task, total=total),
                on_progress=lambda n: bar.advance(task, n),
            )
        )
    typer.echo(f"{count} records from {topic} -> {out}")


def replay_import(
    *,
    source: Annotated[
        Path, typer.Option("--in", exists=True, dir_okay=False, help="JSONL file to read.")
    ],
    topic: Annotated[str, typer.Option("--topic", help="Topic to publish to.")],
    bootstrap: Bootstrap,
    speed: Annotated[
        float, typer.Option(help="Time scale of the events' ts: 2 = twice as fast, 0 = no pacing.")
    ] = 1.0,
    key_as: Annotated[
        str | None,
        typer.Option(help="Key and validate as events of this topic (default: --topic)."),
    ] = None,
    validate: Annotated[bool, typer.Option(help="Check each line against the schema.")] = True,
) -> None:
    """Publish a JSONL file to a topic, paced by the events' ts (keys as DESIGN.md says)."""
    from rich.progress import Progress  # noqa: PLC0415

    from ingest.bus_kafka import KafkaBus, KafkaConfig  # noqa: PLC0415
    from ingest.replay_io import import_file  # noqa: PLC0415

    async def run(advance: Callable[[int], None]) -> int:
        async with KafkaBus(KafkaConfig(bootstrap, client_id="alb-replay-import")) as bus:
            return await import_file(
                bus,
                source,
                topic,
                speed=speed,
                key_as=key_as,
                validate=validate,
                on_progress=advance,
            )

    with Progress(transient=False) as bar:
        task = bar.add_task(f"import -> {topic}", total=source.stat().st_size)
        count = asyncio.run(run(lambda n: bar.advance(task, n)))
    typer.echo(f"{count} records from {source} -> {topic}")


def register_replay_commands(app: typer.Typer) -> None:
    """Add ``export`` and ``import`` to the ``alb replay`` group."""
    app.command("export")(replay_export)
    app.command("import")(replay_import)


replay_app = typer.Typer(
    name="replay",
    help="Replay tooling: export topics to files and import them back.",
    no_args_is_help=True,
    add_completion=False,
)
register_replay_commands(replay_app)
