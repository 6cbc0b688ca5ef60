"""``alb serve``: uvicorn (uvloop, httptools) around ``create_app``.

SIGTERM/SIGINT: uvicorn stops accepting, lets in-flight responses (streams
included) finish for up to ``ALB_DRAIN_TIMEOUT`` seconds, then the lifespan
closes the bridge's resources and the process exits 0.

The simulated-fleet fallback of ``make run`` is the composition root's
(``alb.simfleet``): the bridge itself never loads the simulator.

Once the server is listening, the start-up heap (uvicorn, starlette, pydantic,
prometheus_client, the app and its resources) is frozen out of the garbage
collector's sight: a full collection would otherwise walk all of it, a stall
of 10+ ms for every request in flight (``BENCHMARKS.md``).

``uvicorn_config`` is the one place uvicorn is configured: the connection limits
(``bridge.http.connections``) and uvicorn's proxy headers off (``bridge.http.edge`` reads
``X-Forwarded-For`` from trusted proxies only).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import signal
import socket
import sys
from collections.abc import Coroutine, Generator
from typing import Any, TextIO

import uvicorn
import uvloop
from starlette.applications import Starlette

from bridge.http.app import create_app
from bridge.http.connections import ConnectionLimits, protocol_for
from bridge.settings import Settings


class _Server(uvicorn.Server):
    """uvicorn without re-raising the captured signal after shutdown (exit 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGINT, signal.SIGTERM)
        for sig in sigs:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)


async def run(settings: Settings, *, note: str = "", out: TextIO = sys.stdout) -> None:
    """Serve until SIGTERM/SIGINT; prints the banner (with ``note``, when given, set off
    so no one misses it) and the ready line."""
    app = create_app(settings)
    server = _Server(uvicorn_config(app, settings))
    sockets = [shared_socket(settings.host, settings.port)] if settings.worker_index >= 0 else None
    task = asyncio.get_running_loop().create_task(server.serve(sockets=sockets))
    while not server.started:
        if task.done():
            task.result()
            raise SystemExit(1)
        await asyncio.sleep(0.01)
    freeze_heap()
    port = server.servers[0].sockets[0].getsockname()[1] if server.servers else settings.port
    if settings.worker_index > 0:  # worker 0 prints the banner for all of them
        print(f"worker {settings.worker_index} ready", file=out, flush=True)
    else:
        _banner(settings, out, note, port)
    await task


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket bound with SO_REUSEPORT: the kernel spreads connections over
    every worker's socket on the port (``alb serve --workers``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP (not 0), so asyncio sets TCP_NODELAY on the accepted sockets as on the
    # ones uvicorn binds itself (without it large answers stall on delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Starlette, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The one uvicorn configuration of the bridge (``alb serve`` and the tests).

    httptools through ``bridge.http.connections.GuardedProtocol`` (head timeout and size
    cap, idle keep-alive, body rate, connection cap). uvicorn's proxy headers are
    turned off explicitly: on by default they trust ``FORWARDED_ALLOW_IPS`` (or
    127.0.0.1) and rewrite the client from ``X-Forwarded-For``, so a forged
    ``127.0.0.1`` passed the admin routes' loopback check behind a local proxy;
    the edge reads that header from ``ALB_TRUSTED_PROXIES`` only (``bridge.http.edge``).
    """
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "none",
        "http": protocol_for(ConnectionLimits.from_settings(settings), app.state.bridge.metrics),
        "ws": "none",
        "lifespan": "on",
        "access_log": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": math.ceil(settings.drain_timeout),
        "server_header": False,
        "proxy_headers": False,
        "forwarded_allow_ips": "",
        "limit_concurrency": None,
    }
    if settings.ssl_certfile:
        # TLS terminated by uvicorn itself (``ALB_SSL_CERTFILE`` / ``ALB_SSL_KEYFILE``).
        options["ssl_certfile"] = settings.ssl_certfile
        options["ssl_keyfile"] = settings.ssl_keyfile or None
    options.update(overrides)
    return uvicorn.Config(app, **options)


def freeze_heap() -> None:
    """Collect once, then move every surviving object to the permanent generation."""
    gc.collect()
    gc.freeze()


def _banner(settings: Settings, out: TextIO, sim_note: str, port: int) -> None:
    lines = ["Async-Load Bridge"]
    if sim_note:
        lines += ["", "*" * 78, sim_note, "*" * 78, ""]
    for d in settings.daemon_specs():
        lines.append(
            f"  daemon {d.name}: {d.shown_url} (parallel {d.parallel}, max loaded {d.max_loaded})"
        )
    lines.append(
        f"  keep_alive policy: {settings.keep_alive_policy}; queue {settings.queue_capacity} "
        f"per model (503 from {settings.high_water_depth}); drain {settings.drain_timeout:g}s"
    )
    if settings.redis_url is not None:
        who = settings.replica_id or "host-pid-random"
        lines.append(
            f"  coordination: shared through Redis as {who} (namespace "
            f"{settings.coord_namespace}, lease {settings.lease_ttl:g}s)"
        )
    else:
        lines.append("  coordination: solo (no ALB_REDIS_URL: the only replica)")
    if settings.workers > 1:
        lines.append(f"  workers: {settings.workers} processes on this port (SO_REUSEPORT)")
    lines.append(f"bridge listening on http://{settings.host}:{port}")
    print("\n".join(lines), file=out, flush=True)


def serve(main: Coroutine[Any, Any, None]) -> None:
    """Blocking entry point for the CLI: ``main`` (``run``, or what wraps it) on uvloop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)
