"""A service run as a child process: its handle, and the start loop all of them share.

Theory of operation: ``launch`` makes a fresh temp dir, picks a free loopback port,
asks the service for its command line (which may write config files into the dir)
and spawns it with its output in ``<workdir>/<log_name>``. The handle's
``_wait_ready`` then probes the service until it serves. Picking a free port races
with other processes, so when the log says ``Address already in use`` it tries
again with new ports, three times at most. A service that does not become ready is
stopped and its temp dir removed; the error carries the tail of its log.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, TypeVar

from tests.services._env import (
    ServiceUnavailable,
    free_port,
    runs_in,
    spawn,
    stop_pid,
    stop_process,
    tail,
)

_ATTEMPTS = 3


class ServiceProcess:
    """A running service: where it listens, where its files are, how to stop it.

    A subclass names its ``address`` and the variable that carries it (``env_var``),
    its log file and temp dir prefix, how to probe it (``_wait_ready``) and what to say
    when it does not come up (``_not_ready``). A handle rebuilt from ``scripts/*``'s
    state file has no child process (``proc`` is None).
    """

    env_var: ClassVar[str]
    log_name: ClassVar[str]
    workdir_prefix: ClassVar[str]
    stop_grace_s: ClassVar[float]

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
    def address(self) -> str:
        """What a client is given to reach the service."""
        raise NotImplementedError

    @property
    def export(self) -> str:
        """``NAME=value`` for a shell, pointing a client at the service."""
        return f"{self.env_var}={self.address}"

    @property
    def log(self) -> Path:
        """The service's log file (its stdout and stderr)."""
        return self.workdir / self.log_name

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM, wait ``grace_s`` (default ``stop_grace_s``), SIGKILL; remove the temp dir."""
        grace = self.stop_grace_s if grace_s is None else grace_s
        if self._proc is not None:
            stop_process(self._proc, grace_s=grace)
        elif runs_in(self.pid, self.workdir):
            stop_pid(self.pid, grace_s=grace)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> str | None:
        """None once the service serves, else why not (``proc`` exited, ``deadline`` passed)."""
        raise NotImplementedError

    def _not_ready(self, problem: str, log_tail: str) -> str:
        """The message of the ``ServiceUnavailable`` raised when it did not become ready."""
        raise NotImplementedError


S = TypeVar("S", bound=ServiceProcess)


def launch(
    kind: type[S],
    command: Callable[[int, Path], list[str]],
    *,
    timeout_s: float,
    detach: bool,
) -> S:
    """Run ``command(port, workdir)`` as a ``kind`` and return once it is ready.

    ``detach`` lets the service outlive this process (for ``scripts/* start``).
    Raises ``ServiceUnavailable`` with the service's message and its log tail.
    """
    for attempt in range(_ATTEMPTS):
        started = time.monotonic()
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix=kind.workdir_prefix))
        argv = command(port, workdir)
        proc = spawn(argv, log=workdir / kind.log_name, cwd=workdir, die_with_parent=not detach)
        handle = kind(pid=proc.pid, port=port, workdir=workdir, startup_s=0.0, proc=proc)
        try:
            problem = handle._wait_ready(proc, time.monotonic() + timeout_s)
        except BaseException:  # Ctrl-C, a bug in the probe: never leave a service behind
            handle.stop(grace_s=5.0)
            raise
        if problem is None:
            handle.startup_s = time.monotonic() - started
            if detach:
                handle._proc = None
            return handle
        log_tail = tail(handle.log)
        handle.stop(grace_s=5.0)
        if "Address already in use" in log_tail and attempt < _ATTEMPTS - 1:
            continue  # lost the free-port race; pick new ports
        raise ServiceUnavailable(handle._not_ready(problem, log_tail))
    raise AssertionError("unreachable")
