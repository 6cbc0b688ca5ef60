"""A throwaway ``redis-server`` on a free loopback port, with no persistence.

``start`` runs Debian's ``redis-server`` in the foreground (``--daemonize no``) in a
temp dir, waits until it answers PING and returns a handle whose ``stop`` sends
SIGTERM, waits, falls back to SIGKILL and removes the dir. ``install`` puts
``redis-server`` on the machine with apt-get when it is missing.

``python -m tests.services.redis_server install|start|stop|status`` (``scripts/redis``)
does the same by hand; ``start`` records the server in ``<cache>/redis/server.json``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.services import _cli
from tests.services._env import ServiceUnavailable, cache_dir
from tests.services._process import ServiceProcess, launch

_MISSING = (
    "redis-server not found on PATH: run `scripts/redis install` "
    "(apt-get install redis-server), or set REDIS_URL"
)


class Server(ServiceProcess):
    """A running redis-server: its port, its temp dir, how to stop it."""

    env_var = "REDIS_URL"
    log_name = "redis.log"
    workdir_prefix = "alb-redis-"
    stop_grace_s = 5.0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        """The URL."""
        return self.url

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> str | None:
        return _wait_for_pong(self.port, proc, deadline)

    def _not_ready(self, problem: str, log_tail: str) -> str:
        return f"redis-server did not answer PING: {problem}\n{log_tail}"


def start(*, timeout_s: float = 15.0, detach: bool = False) -> Server:
    """Start redis-server on a free port and return once it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable(_MISSING)

    def command(port: int, workdir: Path) -> list[str]:
        return [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
        ]  # fmt: skip

    return launch(Server, command, timeout_s=timeout_s, detach=detach)


def _wait_for_pong(port: int, proc: subprocess.Popen[bytes], deadline: float) -> str | None:
    """None once PING answers PONG, else why not (exited or timed out)."""
    while True:
        if proc.poll() is not None:
            return f"it exited with status {proc.returncode}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                return None
        if time.monotonic() > deadline:
            return "timed out"
        time.sleep(0.02)


def install() -> None:
    """``apt-get update && apt-get install -y redis-server`` unless it is on PATH."""
    if shutil.which("redis-server"):
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise ServiceUnavailable("redis-server is missing and apt-get is not available here")
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None:
            raise ServiceUnavailable("installing redis-server needs root (or sudo)")
        prefix = [sudo]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in ([apt, "update"], [apt, "install", "-y", "redis-server"]):
        if subprocess.run([*prefix, *argv], env=env, check=False).returncode != 0:
            raise ServiceUnavailable(f"`{' '.join(argv)}` failed")


# --- scripts/redis ---------------------------------------------------------------------


def _cli_install() -> int:
    install()
    print(f"redis-server: {shutil.which('redis-server')}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``scripts/redis``: install | start | stop | status."""
    state, label = cache_dir() / "redis" / "server.json", "redis-server"
    service = _cli.commands(state, Server, lambda: start(detach=True), label)
    return _cli.run(argv, "scripts/redis", {"install": _cli_install, **service})


if __name__ == "__main__":
    sys.exit(main())
