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
import tempfile
import time
from pathlib import Path

from tests.services import _cli
from tests.services._env import (
    ServiceUnavailable,
    cache_dir,
    free_port,
    runs_in,
    spawn,
    stop_pid,
    stop_process,
    tail,
)

_MISSING = (
    "redis-server not found on PATH: run `scripts/redis install` "
    "(apt-get install redis-server), or set REDIS_URL"
)


class Server:
    """A running redis-server: its port, its temp dir, how to stop it."""

    def __init__(
        self,
        *,
        pid: int,
        port: int,
        workdir: Path,
        startup_s: float,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.pid = pid
        self.port = port
        self.workdir = workdir
        self.startup_s = startup_s
        self._proc = proc

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def export(self) -> str:
        """``REDIS_URL=...`` for a shell."""
        return f"REDIS_URL={self.url}"

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.workdir / "redis.log"

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, wait ``grace_s``, SIGKILL; then remove the temp dir."""
        if self._proc is not None:
            stop_process(self._proc, grace_s=grace_s)
        elif runs_in(self.pid, self.workdir):
            stop_pid(self.pid, grace_s=grace_s)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start(*, timeout_s: float = 15.0, detach: bool = False) -> Server:
    """Start redis-server on a free port and return once it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable(_MISSING)
    for attempt in range(3):
        started = time.monotonic()
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="alb-redis-"))
        argv = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
        ]  # fmt: skip
        proc = spawn(argv, log=workdir / "redis.log", cwd=workdir, die_with_parent=not detach)
        server = Server(pid=proc.pid, port=port, workdir=workdir, startup_s=0.0, proc=proc)
        problem = _wait_for_pong(port, proc, time.monotonic() + timeout_s)
        if problem is None:
            server.startup_s = time.monotonic() - started
            if detach:
                server._proc = None
            return server
        log_tail = tail(server.log)
        server.stop()
        if "Address already in use" in log_tail and attempt < 2:
            continue  # lost the free-port race
        raise ServiceUnavailable(f"redis-server did not answer PING: {problem}\n{log_tail}")
    raise AssertionError("unreachable")


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
    return _cli.run(
        argv,
        "scripts/redis",
        {
            "install": _cli_install,
            "start": lambda: _cli.start(state, Server, lambda: start(detach=True), label),
            "stop": lambda: _cli.stop(state, Server, label),
            "status": lambda: _cli.status(state, Server, label),
        },
    )


if __name__ == "__main__":
    sys.exit(main())
