"""``alb trace``: make replay traces (``synth``) and convert real ones (``convert``).

A thin shell over :mod:`predictor.traces`: it parses options, writes JSON Lines to a
file or stdout (``-o -``) and reports the count on stderr. The generators (numpy,
pydantic) are imported inside the commands so that ``alb --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from contextlib import ExitStack
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Literal

import typer

if TYPE_CHECKING:
    from predictor.traces.format import TraceRecord

__all__ = ["trace_app"]

trace_app = typer.Typer(
    name="trace",
    help="Make and convert replay traces (JSON Lines, trace format v1).",
    no_args_is_help=True,
    add_completion=False,
)
convert_app = typer.Typer(
    help="Convert a real trace to trace format v1.", no_args_is_help=True, add_completion=False
)
trace_app.add_typer(convert_app, name="convert")

Output = Annotated[
    Path, typer.Option("--output", "-o", help="Where to write the JSONL trace ('-' = stdout).")
]
Seed = Annotated[int, typer.Option(help="Random seed (same seed, same trace).")]
Day = Annotated[str, typer.Option("--day", help="UTC date of the trace's first day (YYYY-MM-DD).")]
Names = Annotated[
    str | None,
    typer.Option("--model-names", help="Comma-separated model names (overrides --models)."),
]


def _day(text: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
    except ValueError as exc:
        raise typer.BadParameter(f"not a date: {text!r}", param_hint="--day") from exc


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise typer.BadParameter("no model names given", param_hint="--model-names")
    return names


def _emit(requests: Iterable[TraceRecord], output: Path) -> None:
    from predictor.traces.format import write_trace  # noqa: PLC0415

    with ExitStack() as stack:
        out: IO[bytes]
        if str(output) == "-":
            out = sys.stdout.buffer
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(output.open("wb"))
        n = write_trace(requests, out)
        out.flush()
    typer.echo(f"wrote {n} requests to {output}", err=True)


@trace_app.command()
def synth(
    *,
    output: Output,
    seed: Seed = 0,
    day: Day = "2026-01-01",
    duration: Annotated[float, typer.Option(help="Trace length, seconds.")] = 3600.0,
    models: Annotated[int, typer.Option(help="Number of models.")] = 12,
    model_names: Names = None,
    zipf: Annotated[float, typer.Option(help="Zipf exponent of model popularity.")] = 1.1,
    session_types: Annotated[int, typer.Option(help="Session types (model chains).")] = 4,
    chain_strength: Annotated[
        float, typer.Option(help="P(next = the chain's successor) when not staying.")
    ] = 0.7,
    stay_prob: Annotated[float, typer.Option(help="P(next request uses the same model).")] = 0.3,
    sessions_per_minute: Annotated[float, typer.Option(help="Mean session arrivals.")] = 10.0,
    mean_requests: Annotated[float, typer.Option(help="Mean requests per session.")] = 6.0,
    think: Annotated[float, typer.Option(help="Mean seconds between a session's requests.")] = 20.0,
    start_hour: Annotated[float, typer.Option(help="Hour of day at ts = 0.")] = 9.0,
    daily_amplitude: Annotated[float, typer.Option(help="Daily cycle amplitude (0-1).")] = 0.5,
    bursts_per_hour: Annotated[float, typer.Option(help="Mean bursts per hour.")] = 1.0,
    burst_factor: Annotated[float, typer.Option(help="Rate multiplier in a burst.")] = 4.0,
    burst_seconds: Annotated[float, typer.Option(help="Burst length, seconds.")] = 120.0,
) -> None:
    """Generate a synthetic trace: sessions walking model chains, Zipf popularity,
    a daily cycle and bursts."""
    from predictor.traces.synth import SynthParams, synthesize  # noqa: PLC0415

    params = SynthParams(
        seed=seed,
        epoch=_day(day),
        duration_s=duration,
        models=models,
        model_names=_names(model_names),
        zipf_s=zipf,
        session_types=session_types,
        chain_strength=chain_strength,
        stay_prob=stay_prob,
        sessions_per_minute=sessions_per_minute,
        mean_requests=mean_requests,
        think_s=think,
        start_hour=start_hour,
        daily_amplitude=daily_amplitude,
        bursts_per_hour=bursts_per_hour,
        burst_factor=burst_factor,
        burst_s=burst_seconds,
    )
    try:
        params.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    _emit(synthesize(params), output)


@convert_app.command("azure-functions")
def azure_functions(
    *,
    source: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="Per-minute counts: invocations_per_function_md.anon.dNN.csv as published "
            "(minute columns 1..1440) or a sample with minute_N / N_minute columns.",
        ),
    ],
    output: Output,
    models: Annotated[int, typer.Option(help="Number of models.")] = 20,
    model_names: Names = None,
    mapping: Annotated[
        Literal["top-n", "hash-mod"],
        typer.Option(help="top-n: volume ranks map to models one to one; hash-mod: all."),
    ] = "top-n",
    rank_offset: Annotated[
        int, typer.Option(help="top-n: skip this many busiest functions (e.g. 200).")
    ] = 0,
    session: Annotated[
        Literal["app", "owner", "function", "none"],
        typer.Option(help="Column that becomes the session."),
    ] = "app",
    start_minute: Annotated[int, typer.Option(help="First minute (1-1440).")] = 1,
    minutes: Annotated[int | None, typer.Option(help="How many minutes (default: all).")] = None,
    scale: Annotated[float, typer.Option(help="Multiply every count (thinning when < 1).")] = 1.0,
    seed: Seed = 0,
    day: Day = "2026-01-01",
) -> None:
    """Azure Functions 2019 per-minute counts -> requests (Poisson within each minute)."""
    from predictor.traces.azure import TraceLayoutError, convert_azure_functions  # noqa: PLC0415

    try:
        reqs = convert_azure_functions(
            source,
            models=models,
            model_names=_names(model_names),
            mapping=mapping,
            rank_offset=rank_offset,
            session=session,
            start_minute=start_minute,
            minutes=minutes,
            scale=scale,
            seed=seed,
            epoch=_day(day),
        )
        _emit(reqs, output)
    except TraceLayoutError as exc:
        typer.echo(f"alb trace convert azure-functions: {exc}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@convert_app.command("azure-llm")
def azure_llm(
    *,
    sources: Annotated[
        list[Path],
        typer.Argument(exists=True, dir_okay=False, help="AzureLLMInferenceTrace_*.csv files"),
    ],
    output: Output,
    assign: Annotated[
        Literal["per-file", "zipf", "hash-mod"],
        typer.Option(help="per-file: one model per service file; zipf / hash-mod: --models."),
    ] = "per-file",
    models: Annotated[int, typer.Option(help="Models for zipf / hash-mod.")] = 2,
    model_names: Names = None,
    sessions_per_file: Annotated[int, typer.Option(help="Sessions per service.")] = 1,
    api: Annotated[Literal["native", "openai"], typer.Option(help="API of every request.")] = (
        "openai"
    ),
    num_ctx: Annotated[
        Literal["none", "fit"],
        typer.Option(help="fit: smallest power of two >= 2048 holding prompt + output."),
    ] = "none",
    seed: Seed = 0,
) -> None:
    """Azure LLM inference 2023 -> requests with the real arrival times and token counts."""
    from predictor.traces.azure import convert_azure_llm  # noqa: PLC0415

    if sessions_per_file < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--sessions-per-file")
    try:
        reqs = convert_azure_llm(
            sources,
            assign=assign,
            models=models,
            model_names=_names(model_names),
            sessions_per_file=sessions_per_file,
            api=api,
            num_ctx=num_ctx,
            seed=seed,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    _emit(reqs, output)
