"""Run a whole simulated fleet for tests: real uvicorn servers, real sockets.

``serve_in_thread`` starts every daemon on a free loopback port in a
background thread with its own event loop, so sync and async tests alike can
talk to it over HTTP and steer it (faults, crash, restart) from the test
thread::

    with serve_in_thread({"time_scale": 0.01, "models": [...], "daemons": [...]}) as fleet:
        d = fleet.daemon("gpu0")
        httpx.post(d.base_url + "/api/generate", json={"model": "llama3"})
        assert [e.kind for e in d.events()][:2] == ["load-start", "loaded"]
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ollamasim.config import FleetConfig
from ollamasim.eventlog import SimEvent
from ollamasim.faults import Faults
from ollamasim.serving import DaemonServer

T = TypeVar("T")


def _as_config(config: FleetConfig | dict[str, Any] | Path | str) -> FleetConfig:
    if isinstance(config, FleetConfig):
        return config
    if isinstance(config, dict):
        return FleetConfig.model_validate(config)
    return FleetConfig.load(config)


def free_ports(config: FleetConfig) -> FleetConfig:
    """The same fleet with every daemon on port 0 (the OS picks a free port)."""
    daemons = tuple(d.model_copy(update={"port": 0}) for d in config.daemons)
    return config.model_copy(update={"daemons": daemons})


class RunningDaemon:
    """A handle on one daemon of a running fleet, usable from any thread."""

    def __init__(
        self, server: DaemonServer, run: Callable[[Coroutine[Any, Any, Any]], Any]
    ) -> None:
        self._server = server
        self._run = run

    @property
    def name(self) -> str:
        return self._server.name

    @property
    def base_url(self) -> str:
        return self._server.base_url

    @property
    def faults(self) -> Faults:
        return self._server.faults

    def events(self) -> list[SimEvent]:
        return self._server.log.snapshot()

    def wait_for_event(
        self, predicate: Callable[[list[SimEvent]], bool], timeout: float = 10.0
    ) -> list[SimEvent]:
        """Block until ``predicate(events)`` holds; raises TimeoutError otherwise."""
        events = self._server.log.wait_for(predicate, timeout)
        if not predicate(events):
            raise TimeoutError(
                f"event condition not met within {timeout}s: {[e.kind for e in events]}"
            )
        return events

    def crash(self) -> None:
        self._run(self._server.crash())

    def restart(self) -> None:
        self._run(self._server.restart())


class RunningFleet:
    def __init__(self, daemons: list[RunningDaemon]) -> None:
        self.daemons = daemons

    def daemon(self, name: str) -> RunningDaemon:
        for d in self.daemons:
            if d.name == name:
                return d
        raise KeyError(name)


@contextlib.contextmanager
def serve_in_thread(
    config: FleetConfig | dict[str, Any] | Path | str, host: str = "127.0.0.1"
) -> Iterator[RunningFleet]:
    fleet_config = free_ports(_as_config(config))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(target=_run_loop, args=(loop, ready), name="ollamasim", daemon=True)
    thread.start()
    ready.wait()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    servers = [DaemonServer(fleet_config, d, host) for d in fleet_config.daemons]
    try:
        for s in servers:
            run(s.start())
        yield RunningFleet([RunningDaemon(s, run) for s in servers])
    finally:
        for s in servers:
            with contextlib.suppress(Exception):
                run(s.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


@contextlib.asynccontextmanager
async def running_fleet(
    config: FleetConfig | dict[str, Any] | Path | str, host: str = "127.0.0.1"
) -> AsyncIterator[RunningFleet]:
    """Async twin of ``serve_in_thread`` (the fleet still runs on its own thread,
    so the blocking handle methods never stall the caller's loop for long)."""
    cm = serve_in_thread(config, host)
    fleet = await asyncio.to_thread(cm.__enter__)
    try:
        yield fleet
    finally:
        await asyncio.to_thread(cm.__exit__, None, None, None)
