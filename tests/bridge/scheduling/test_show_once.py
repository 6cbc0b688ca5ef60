"""A model's ``/api/show`` is asked once, however many requests need it together.

The first requests for a model that the bridge has not described yet all need its
``ModelInfo`` (sizing) and its capabilities (embedding-only or not). Before, each asked
the daemon: 64 concurrent first requests made 64 ``/api/show`` calls (seen on the wire
in front of the simulator, BENCHMARKS.md "Replicas and workers"). A real HTTP server on
loopback counts them here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bridge.scheduling.fleet import Fleet
from bridge.settings import load_settings
from bridge.upstream import Upstream

KEY = "m:latest"


class _Daemon:
    """``/api/show`` that answers slowly enough for every caller to be waiting."""

    def __init__(self, *, status: int = 200) -> None:
        self.calls = 0
        self.status = status

    async def show(self, request: web.Request) -> web.Response:
        self.calls += 1
        await asyncio.sleep(0.05)
        if self.status != 200:
            return web.json_response({"error": "boom"}, status=self.status)
        body = {
            "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
            "capabilities": ["completion"],
        }
        return web.json_response(body)


async def _serve(daemon: _Daemon) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/api/show", daemon.show)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def served() -> AsyncIterator[tuple[_Daemon, Fleet]]:
    daemon = _Daemon()
    runner, url = await _serve(daemon)
    settings = load_settings({"ALB_DAEMONS": f"a={url}"})
    upstream = Upstream.create(settings)
    fleet = Fleet(settings.daemon_specs(), upstream, 10)
    d = fleet.get("a")
    d.up, d.catalog = True, {KEY: {"model": KEY, "size": 1000}}
    try:
        yield daemon, fleet
    finally:
        await upstream.aclose()
        await runner.cleanup()


async def test_concurrent_first_requests_share_one_show(served: tuple[_Daemon, Fleet]) -> None:
    daemon, fleet = served
    d = fleet.get("a")
    infos = [fleet.model_info(KEY) for _ in range(64)]
    caps = [fleet.capabilities(d, KEY) for _ in range(64)]
    got, capabilities = await asyncio.gather(asyncio.gather(*infos), asyncio.gather(*caps))
    assert daemon.calls == 1
    first = got[0]
    assert first is not None
    assert all(i == first for i in got)
    assert first.context_length == 8192
    assert set(capabilities) == {("completion",)}
    # Cached from then on.
    await fleet.model_info(KEY)
    await fleet.capabilities(d, KEY)
    assert daemon.calls == 1


async def test_a_failed_show_fails_everyone_waiting_once_and_is_asked_again_later(
    served: tuple[_Daemon, Fleet],
) -> None:
    daemon, fleet = served
    daemon.status = 500
    results = await asyncio.gather(*(fleet.model_info(KEY) for _ in range(8)))
    # The waiters share the one failed answer (no queue of retries behind it).
    assert results == [None] * 8
    assert daemon.calls == 1
    # Nothing was cached: the next request asks again.
    daemon.status = 200
    info = await fleet.model_info(KEY)
    assert info is not None
    assert daemon.calls == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_others(
    served: tuple[_Daemon, Fleet],
) -> None:
    daemon, fleet = served
    first = asyncio.create_task(fleet.model_info(KEY))
    second = asyncio.create_task(fleet.model_info(KEY))
    await asyncio.sleep(0.01)  # both wait on the one /api/show
    first.cancel()
    info = await second
    assert info is not None
    assert first.cancelled()
    assert daemon.calls == 1


async def test_closing_the_fleet_cancels_a_show_in_flight(served: tuple[_Daemon, Fleet]) -> None:
    _, fleet = served
    waiting = asyncio.create_task(fleet.model_info(KEY))
    await asyncio.sleep(0.01)
    await fleet.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiting
