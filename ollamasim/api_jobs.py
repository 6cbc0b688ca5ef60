"""Running one request for either API surface: schedule it, then generate.

Theory of operation: ``start_job`` applies an injected request failure, then waits
for a runner (``scheduleRunner``); its failures come back as the surface's error
response. ``collect`` runs a generation to its end for a non-streamed reply;
``stream_frames`` turns one into the frames of a streamed reply. A stream fault
(``Faults.stream_fault``) cuts a generation after ``after_chunks`` pieces. Both
finish the job however the generation ends, so the runner is always released.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ollamasim.api_common import engine_of, error_response
from ollamasim.config import ModelConfig
from ollamasim.engine import ScheduleError
from ollamasim.faults import StreamFault
from ollamasim.inference import ClientGone, Job, Stats, until_disconnect
from ollamasim.scheduler import OptionError


async def schedule(
    request: Request,
    model: ModelConfig,
    options: dict[str, Any],
    keep_alive: int | None,
    endpoint: str,
) -> Job:
    """Fault check, then ``scheduleRunner``; raises ScheduleError / ClientGone."""
    engine = engine_of(request)
    failure = engine.faults.take_failure(model.key)
    if failure is not None:
        raise ScheduleError(*failure)
    try:
        opts = engine.runner_options(model, options)
    except OptionError as exc:
        raise ScheduleError(500, str(exc)) from None
    runner, load_s = await until_disconnect(request, engine.acquire(model, opts, keep_alive))
    return Job(engine, runner, load_s, endpoint)


async def start_job(  # noqa: PLR0917
    request: Request,
    model: ModelConfig,
    options: dict[str, Any],
    keep_alive: int | None,
    endpoint: str,
    error: Callable[[str, int], Response] = error_response,
) -> Job | Response:
    """``schedule``, or ``error(message, status)`` saying why it failed."""
    try:
        return await schedule(request, model, options, keep_alive, endpoint)
    except ScheduleError as exc:
        return error(exc.message, exc.status)
    except ClientGone:
        return error("request canceled", 499)


async def collect(
    job: Job, prompt: str, options: dict[str, Any], cut_after: int | None
) -> tuple[str, Stats | None]:
    """Generate ``prompt`` to the end, or only ``cut_after`` pieces; then finish ``job``.

    Returns the text and the final ``Stats``, or None for them when cut short.
    """
    pieces: list[str] = []
    gen = job.generate(prompt, options)
    try:
        async for item in gen:
            if isinstance(item, Stats):
                return "".join(pieces), item
            pieces.append(item)
            if cut_after is not None and len(pieces) >= cut_after:
                return "".join(pieces), None
    finally:
        await gen.aclose()
        job.finish()
    raise AssertionError("Job.generate ended without Stats")  # pragma: no cover


async def stream_frames(  # noqa: PLR0917
    job: Job,
    prompt: str,
    options: dict[str, Any],
    fault: StreamFault | None,
    piece: Callable[[str], bytes],
    done: Callable[[Stats], Iterable[bytes]],
    broken: Callable[[str], bytes],
) -> AsyncIterator[bytes]:
    """The body of a streamed reply: ``piece`` a text piece, then ``done``'s frames.

    ``fault`` cuts it after ``after_chunks`` pieces, with ``broken(message)`` when the
    fault has a message. The job finishes with the outcome ok, fault or cancelled.
    """
    sent = 0
    outcome = "ok"
    gen = job.generate(prompt, options)
    try:
        async for item in gen:
            if fault is not None and sent >= fault.after_chunks:
                outcome = "fault"
                if fault.message is not None:
                    yield broken(fault.message)
                return
            if isinstance(item, Stats):
                for frame in done(item):
                    yield frame
                return
            yield piece(item)
            sent += 1
    except BaseException:
        outcome = "cancelled"
        raise
    finally:
        await gen.aclose()
        job.finish(outcome=outcome)
