"""``alb sim``: serve every daemon of a fleet file until SIGINT/SIGTERM.

On uvloop when it is installed (the cheaper loop leaves more of the machine to
whatever is measured against the simulator), and with the start-up heap frozen
once every daemon listens: a full garbage collection otherwise walks everything
the imports created (uvicorn, starlette, pydantic, ...), 14-17 ms stalls every
0.3-0.5 s at concurrency 64, each one a latency spike for every request in
flight (``BENCHMARKS.md``); ~1 ms after ``gc.freeze()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from ollamasim.config import FleetConfig
from ollamasim.serving import DaemonServer


async def _serve(config: FleetConfig, host: str) -> None:
    servers = [DaemonServer(config, d, host) for d in config.daemons]
    for s in servers:
        await s.start()
        print(f"daemon {s.name} listening on {s.base_url}", flush=True)
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)


def _loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if not use_uvloop:
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional: the stdlib loop works too
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve_fleet(config_path: Path, host: str = "127.0.0.1", *, use_uvloop: bool = True) -> None:
    """Blocking: run the fleet in ``config_path`` until interrupted (on uvloop when
    installed and ``use_uvloop``)."""
    config = FleetConfig.load(config_path)
    with (
        contextlib.suppress(KeyboardInterrupt),  # signal raced the handler install
        asyncio.Runner(loop_factory=_loop_factory(use_uvloop)) as runner,
    ):
        runner.run(_serve(config, host))
    sys.stdout.flush()
