"""Shared helpers: a simulated fleet and the bridge on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette

from bridge.app import create_app
from bridge.settings import Settings, load_settings
from ollamasim.testing import RunningFleet

GIB = 1024**3

#: A small fleet: time_scale 0.01 turns the 2 s load of "chatty" into ~20 ms of wall time.
SIM_CONFIG: dict[str, Any] = {
    "time_scale": 0.01,
    "gen_tokens_per_s": 2000,
    "prefill_tokens_per_s": 100000,
    "models": [
        {"name": "chatty", "size": GIB, "response_tokens": 6, "capabilities": ["completion"]},
        {"name": "other", "size": GIB, "response_tokens": 4, "capabilities": ["completion"]},
        {
            "name": "vec",
            "size": GIB // 4,
            "capabilities": ["embedding"],
            "embedding_length": 8,
        },
    ],
    "daemons": [{"name": "a", "memory": 16 * GIB, "load_fixed_s": 2.0, "num_parallel": 2}],
}


def settings_for(fleet: RunningFleet, **overrides: Any) -> Settings:
    daemons = ",".join(f"{d.name}={d.base_url}?parallel=2" for d in fleet.daemons)
    env = {"ALB_DAEMONS": daemons}
    return load_settings(env, **overrides)


@dataclass
class RunningBridge:
    base_url: str
    app: Starlette
    server: uvicorn.Server


def _free_socket() -> socket.socket:
    # IPPROTO_TCP (not 0) so asyncio sets TCP_NODELAY on accepted sockets: without it
    # large responses stall ~40 ms on delayed ACKs (as `alb serve`'s uvicorn sockets do not).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@contextlib.asynccontextmanager
async def running_bridge(settings: Settings) -> AsyncIterator[RunningBridge]:
    """The bridge on a free loopback port, served by uvicorn in this event loop."""
    app = create_app(settings)
    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2
    )
    server = _QuietServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield RunningBridge(f"http://127.0.0.1:{port}", app, server)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


def kinds(events: list[Any], model: str | None = None) -> list[str]:
    return [e.kind for e in events if model is None or e.model == model]
