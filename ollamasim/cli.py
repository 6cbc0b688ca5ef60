"""``alb sim``: serve every daemon of a fleet file until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from ollamasim.config import FleetConfig
from ollamasim.serving import DaemonServer


async def _serve(config: FleetConfig, host: str) -> None:
    servers = [DaemonServer(config, d, host) for d in config.daemons]
    for s in servers:
        await s.start()
        print(f"daemon {s.name} listening on {s.base_url}", flush=True)
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


def serve_fleet(config_path: Path, host: str = "127.0.0.1") -> None:
    """Blocking: run the fleet in ``config_path`` until interrupted."""
    config = FleetConfig.load(config_path)
    with contextlib.suppress(KeyboardInterrupt):  # signal raced the handler install
        asyncio.run(_serve(config, host))
    sys.stdout.flush()
