"""Serving one daemon with uvicorn on its own socket, with crash and restart.

``crash`` stops listening and aborts every open connection at once (clients
see resets / truncated bodies); in-flight requests are logged as
``request-interrupted``. ``restart`` binds the same port again with a fresh
engine: nothing loaded, empty queues, as after a real process restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Generator

import uvicorn

from ollamasim.app import build_app
from ollamasim.clock import Clock
from ollamasim.config import DaemonConfig, FleetConfig
from ollamasim.engine import Engine
from ollamasim.eventlog import EventLog
from ollamasim.faults import Faults


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The fleet owns signal handling; one uvicorn server per daemon must not.
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every keep-alive response waits ~40 ms for a
    # delayed ACK (Nagle). Ollama (Go) disables Nagle by default.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DaemonServer:
    """Owns one daemon's engine and uvicorn server inside an event loop."""

    def __init__(self, fleet: FleetConfig, config: DaemonConfig, host: str) -> None:
        self.fleet = fleet
        self.config = config
        self.host = host
        self.port = config.port
        self.log = EventLog(fleet.event_log_limit)
        self.faults = Faults()
        self.clock = Clock(fleet.time_scale)
        self.engine = self._new_engine()
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _new_engine(self) -> Engine:
        return Engine(self.fleet, self.config, self.clock, self.faults, self.log)

    async def start(self) -> None:
        self._sock = bind_socket(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        self.engine.start()
        app = build_app(self, loopback=is_loopback(self.host))
        cfg = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
            ws="none",
        )
        self._server = _Server(cfg)
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[self._sock])
        )
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Graceful: stop accepting, let responses finish (bounded), stop the engine."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.engine.stop()
        self._server = None
        self._task = None

    async def crash(self) -> None:
        self.engine.crashed = True
        self.engine.emit("crash", None, reason="injected")
        server = self._server
        if server is not None:
            server.should_exit = True
            server.force_exit = True
            for srv in server.servers:
                srv.close()
            for conn in list(server.server_state.connections):
                transport = getattr(conn, "transport", None)
                if transport is not None:
                    transport.abort()
            if self._task is not None:
                with contextlib.suppress(BaseException):
                    await self._task
        await self.engine.stop()
        self._server = None
        self._task = None

    async def restart(self) -> None:
        self.engine = self._new_engine()
        await self.start()
        self.engine.emit("restart", None)

    def schedule_crash(self, restart_after_s: float | None) -> None:
        """Crash requested over HTTP: after the reply is sent, crash (and maybe restart)."""

        async def _go() -> None:
            await asyncio.sleep(0.05)
            await self.crash()
            if restart_after_s is not None:
                await asyncio.sleep(float(restart_after_s))
                await self.restart()

        task = asyncio.get_running_loop().create_task(_go())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
