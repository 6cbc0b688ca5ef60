"""``alb serve --workers N``: N bridge processes on one port, each a replica.

The kernel spreads connections over the workers' sockets (SO_REUSEPORT); the workers
coordinate as any replicas do, through ``ALB_REDIS_URL`` (``bridge.coord``): one owner
per daemon, the others asking it. This process only supervises: it starts the workers
(``ALB_WORKER_INDEX``, ``ALB_REPLICA_ID`` = ``<id>-w<index>``), passes SIGTERM and SIGINT
on (each drains as a single bridge does, handing its daemons over first), and, should a
worker die, stops the others and exits 1, so the service manager restarts the set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from bridge.coord.shared import new_replica_id
from bridge.settings import Settings

__all__ = ["supervise"]

_POLL_S = 0.2


def _argv(settings: Settings, sim_fallback: bool) -> list[str]:
    argv = [sys.executable, "-m", "alb", "serve", "--host", settings.host]
    argv += ["--port", str(settings.port)]
    return argv + (["--sim-fallback"] if sim_fallback else [])


def supervise(settings: Settings, *, sim_fallback: bool = False) -> int:
    """Run ``settings.workers`` workers until a signal (exit 0) or a worker's death (1)."""
    base = settings.replica_id or new_replica_id()
    children: list[subprocess.Popen[bytes]] = []
    for i in range(settings.workers):
        env = dict(os.environ)
        env.update(
            ALB_WORKERS=str(settings.workers),
            ALB_WORKER_INDEX=str(i),
            ALB_REPLICA_ID=f"{base}-w{i}",
        )
        children.append(subprocess.Popen(_argv(settings, sim_fallback), env=env))
    stopping = False

    def forward(sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        codes = [child.poll() for child in children]
        if all(code is not None for code in codes):
            return 0 if stopping and all(code == 0 for code in codes) else 1
        if not stopping and any(code is not None for code in codes):
            dead = [i for i, code in enumerate(codes) if code is not None]
            print(f"alb serve: worker {dead[0]} exited; stopping the others", file=sys.stderr)
            forward(signal.SIGTERM, None)
            stopping = True
            for child in children:
                child.wait()
            return 1
        time.sleep(_POLL_S)
