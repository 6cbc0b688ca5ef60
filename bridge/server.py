"""``alb serve``: uvicorn (uvloop, httptools) around ``create_app``.

SIGTERM/SIGINT: uvicorn stops accepting, lets in-flight responses (streams
included) finish for up to ``ALB_DRAIN_TIMEOUT`` seconds, then the lifespan
closes the bridge's resources and the process exits 0.

With ``sim_fallback`` (what ``make run`` asks for), when no daemon was
configured (neither ``ALB_DAEMONS`` nor ``OLLAMA_HOST``) and nothing answers at
the default Ollama address, a simulated fleet (``ollamasim``) is started in
this process and the banner says so plainly.

Once the server is listening, the start-up heap (uvicorn, starlette, pydantic,
prometheus_client, the app and its resources) is frozen out of the garbage
collector's sight: a full collection would otherwise walk all of it, a stall
of 10+ ms for every request in flight (``BENCHMARKS.md``).

``uvicorn_config`` is the one place uvicorn is configured: the connection limits
(``bridge.connections``) and uvicorn's proxy headers off (``bridge.edge`` reads
``X-Forwarded-For`` from trusted proxies only).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import signal
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any, TextIO

import httpx
import uvicorn
import uvloop
from starlette.applications import Starlette

from bridge.app import create_app
from bridge.connections import ConnectionLimits, protocol_for
from bridge.settings import Settings

_PROBE_TIMEOUT_S = 1.0
_EXAMPLE_FLEET = Path("examples/fleet.yaml")
#: Used when examples/fleet.yaml is not around (an installed package).
BUILTIN_FLEET: dict[str, Any] = {
    "time_scale": 0.1,
    "models": [
        {"name": "llama3.2:3b", "size": "2.0GB", "capabilities": ["completion", "tools"]},
        {"name": "nomic-embed-text", "size": "274MB", "capabilities": ["embedding"]},
    ],
    "daemons": [{"name": "sim0", "memory": "24GiB", "load_fixed_s": 1.5}],
}


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


async def _ollama_answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=_PROBE_TIMEOUT_S, trust_env=False) as client:
            resp = await client.get(url + "/api/version")
            return resp.status_code == 200
    except httpx.HTTPError:
        return False


async def _start_sim(settings: Settings) -> tuple[list[Any], str, str]:
    # Imported here: production serving never needs the simulator.
    from ollamasim.config import FleetConfig  # noqa: PLC0415
    from ollamasim.serving import DaemonServer  # noqa: PLC0415
    from ollamasim.testing import free_ports  # noqa: PLC0415

    if settings.sim_config:
        source, config = settings.sim_config, FleetConfig.load(settings.sim_config)
    elif _EXAMPLE_FLEET.is_file():  # noqa: ASYNC240 - start-up, once
        source, config = str(_EXAMPLE_FLEET), FleetConfig.load(_EXAMPLE_FLEET)
    else:
        source, config = "a built-in small fleet", FleetConfig.model_validate(BUILTIN_FLEET)
    config = free_ports(config)
    servers = [DaemonServer(config, d, "127.0.0.1") for d in config.daemons]
    for s in servers:
        await s.start()
    daemons = ",".join(f"{s.name}={s.base_url}?parallel={s.config.num_parallel}" for s in servers)
    return servers, daemons, source


async def run(settings: Settings, *, explicit_upstream: bool, out: TextIO = sys.stdout) -> None:
    """Serve until SIGTERM/SIGINT; prints the banner and the ready line."""
    sim_servers: list[Any] = []
    sim_note = ""
    if (
        settings.sim_fallback
        and not explicit_upstream
        and not await _ollama_answers(settings.ollama_host)
    ):
        sim_servers, daemons, source = await _start_sim(settings)
        settings = settings.model_copy(update={"daemons": daemons})
        sim_note = (
            f"SIMULATED FLEET: nothing answered at {settings.ollama_host} and OLLAMA_HOST "
            f"is unset, so the bridge is serving an in-process simulated Ollama fleet "
            f"(ollamasim, from {source}). Answers are synthetic. Start Ollama or set "
            "OLLAMA_HOST / ALB_DAEMONS to use real models."
        )
    try:
        app = create_app(settings)
        server = _Server(uvicorn_config(app, settings))
        task = asyncio.get_running_loop().create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
                raise SystemExit(1)
            await asyncio.sleep(0.01)
        freeze_heap()
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else settings.port
        _banner(settings, out, sim_note, port)
        await task
    finally:
        for s in sim_servers:
            with contextlib.suppress(Exception):
                await s.stop()


def uvicorn_config(app: Starlette, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The one uvicorn configuration of the bridge (``alb serve`` and the tests).

    httptools through ``bridge.connections.GuardedProtocol`` (head timeout and size
    cap, idle keep-alive, body rate, connection cap). uvicorn's proxy headers are
    turned off explicitly: on by default they trust ``FORWARDED_ALLOW_IPS`` (or
    127.0.0.1) and rewrite the client from ``X-Forwarded-For``, so a forged
    ``127.0.0.1`` passed the admin routes' loopback check behind a local proxy;
    the edge reads that header from ``ALB_TRUSTED_PROXIES`` only (``bridge.edge``).
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
    lines.append(f"bridge listening on http://{settings.host}:{port}")
    print("\n".join(lines), file=out, flush=True)


def serve(settings: Settings, *, explicit_upstream: bool) -> None:
    """Blocking entry point for the CLI: uvloop, then ``run``."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(settings, explicit_upstream=explicit_upstream))
