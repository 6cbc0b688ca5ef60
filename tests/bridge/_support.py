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

from bridge.events.sink import RecordSink
from bridge.http.app import create_app
from bridge.http.server import uvicorn_config
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


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    # IPPROTO_TCP (not 0) so asyncio sets TCP_NODELAY on accepted sockets: without it
    # large responses stall ~40 ms on delayed ACKs (as `alb serve`'s uvicorn sockets do not).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@contextlib.asynccontextmanager
async def running_bridge(
    settings: Settings, *, bind: str = "127.0.0.1", sink: RecordSink | None = None
) -> AsyncIterator[RunningBridge]:
    """The bridge on a free port of ``bind``, served by uvicorn in this event loop with
    ``alb serve``'s configuration (``bridge.http.server.uvicorn_config``: the guarded httptools
    protocol, uvicorn's proxy headers off)."""
    app = create_app(settings, sink=sink)
    sock = listening_socket(bind)
    port = sock.getsockname()[1]
    server = _QuietServer(uvicorn_config(app, settings, timeout_graceful_shutdown=2))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        shown = f"[{bind}]" if ":" in bind else bind
        yield RunningBridge(f"http://{shown}:{port}", app, server)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


def kinds(events: list[Any], model: str | None = None) -> list[str]:
    return [e.kind for e in events if model is None or e.model == model]
