"""Child processes for benchmarks: the simulator, candidate proxies, ``alb serve``.

Each service runs in its own process (its own GIL), writes its output to a log
file (a pipe nobody reads could block it), and is ready once an HTTP ``GET``
answers 200. Everything listens on 127.0.0.1 on a port picked here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Service:
    """A child process serving HTTP on 127.0.0.1."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO,
        owns_cwd: bool = False,
    ) -> None:
        self.name = name
        self._owned = cwd if owns_cwd else None
        self.port = port
        self.log = Path(tempfile.mkstemp(prefix=f"alb-bench-{name.replace('/', '_')}-")[1])
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=child_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, path: str = "/api/version", timeout: float = 30.0) -> None:
        """Poll ``GET path`` until it answers 200; raise with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=2.0).status_code == 200:
                    return
            time.sleep(0.1)
        tail = self.output()[-3000:]
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready:\n{tail}")

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL after 5 s."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            self.log.unlink()
        if self._owned is not None:
            shutil.rmtree(self._owned, ignore_errors=True)


#: The project's top-level packages; a revision has some of them (``alb``, ``common`` and
#: ``replay`` came with the restructure of issue #13).
PACKAGES = ("alb", "bridge", "common", "ingest", "ollamasim", "predictor", "replay")


def bridge_source(rev: str) -> tuple[Path, str]:
    """``alb serve``'s code as committed at ``rev`` (``"worktree"``: as on disk) and the
    module its CLI runs as (``alb.cli``; ``bridge`` + ``.cli`` before the restructure), so
    one benchmark can run revisions from before and after it side by side."""
    if rev == "worktree":
        src = REPO
    else:
        listed = subprocess.run(
            ["git", "ls-tree", "--name-only", rev], cwd=REPO, capture_output=True, check=True
        ).stdout.decode()
        src = snapshot(rev, [p for p in PACKAGES if p in listed.split()])
    return src, "alb.cli" if (src / "alb" / "cli.py").exists() else "bridge" + ".cli"


def snapshot(rev: str, paths: Sequence[str]) -> Path:
    """``paths`` as committed at ``rev``, plus this ``bench/``, in a fresh directory.

    Other engineers edit the shared working tree while benchmarks run; a child
    started with this directory as its working directory (first on ``sys.path``)
    imports the committed code, not a half-saved file. The caller removes it.
    """
    out = Path(tempfile.mkdtemp(prefix="alb-bench-src-"))
    archive = subprocess.run(
        ["git", "archive", rev, *paths], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    shutil.copytree(REPO / "bench", out / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    return out


def start_sim(fleet: Path, *, rev: str = "HEAD", stdlib_loop: bool = False) -> Service:
    """The simulator on ``fleet``, its daemon's port replaced by a free port.

    Runs ``ollamasim`` as committed at ``rev`` (``"worktree"``: as it is on disk).
    ``bench.sim`` (uvloop) by default; ``alb sim``'s own loop with ``stdlib_loop``
    (see ``bench/sim.py`` for why the default is not ``alb sim``).
    """
    port = free_port()
    text = re.sub(r"(?m)^(\s*)port:\s*\d+\s*$", rf"\g<1>port: {port}", fleet.read_text())
    fd, path = tempfile.mkstemp(prefix="alb-bench-fleet-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    src = REPO if rev == "worktree" else snapshot(rev, ["ollamasim"])
    argv = [sys.executable, "-m", "bench.sim", "--config", path]
    if stdlib_loop:
        argv.append("--stdlib-loop")
    sim = Service("sim", argv, port, cwd=src, owns_cwd=src != REPO)
    try:
        sim.wait_ready()
    finally:
        os.unlink(path)
    return sim
