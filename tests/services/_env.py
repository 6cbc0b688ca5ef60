"""Shared plumbing for the service harness: availability policy, ports, processes.

Policy: a service that cannot start *skips* the tests that need it on a laptop, but
*fails* them when ``CI`` is true, so a green CI run means the real thing ran.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
_TRUTHY = {"1", "true", "yes", "on"}
T = TypeVar("T")


class ServiceUnavailable(RuntimeError):
    """A service could not be provided; the message names the missing piece."""


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to a true-ish value."""
    return os.environ.get(name, "").strip().lower() in _TRUTHY


def in_ci() -> bool:
    """Whether we run under CI (``CI`` set to a true-ish value)."""
    return env_flag("CI")


def unavailable(
    msg: str,
    *,
    required: bool | None = None,
    why: str = "CI=true: a missing service fails the run",
) -> NoReturn:
    """Fail the test when the service is ``required``, skip it otherwise; ``msg`` says why.

    ``required`` defaults to ``in_ci()``; a failure names ``why`` it was required.
    """
    import pytest  # noqa: PLC0415 - keep this module importable by the scripts without pytest

    if in_ci() if required is None else required:
        pytest.fail(f"{msg} ({why})", pytrace=False)
    pytest.skip(msg)


def provide(start: Callable[[], T], label: str) -> T:
    """``start()``; if it raises ``ServiceUnavailable``, ``unavailable`` says why."""
    try:
        return start()
    except ServiceUnavailable as exc:
        problem = f"{label}: {exc}"
    unavailable(problem)  # outside the except block, so the report is not a chained traceback


def cache_dir() -> Path:
    """``$ALB_CACHE_DIR`` or ``~/.cache/alb``: downloads kept between runs."""
    root = os.environ.get("ALB_CACHE_DIR") or str(Path.home() / ".cache" / "alb")
    return Path(root)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    die_with_parent: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session with stdout and stderr appended to ``log``.

    With ``die_with_parent`` the kernel sends SIGTERM to the child when this process
    dies, so a killed pytest does not leave a broker behind (Linux only; a no-op
    elsewhere). ``scripts/* start`` turns it off: there the service must outlive us.
    """
    preexec: Callable[[], None] | None = _pdeathsig if die_with_parent else None
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509 - only calls prctl, which is fork-safe
        )


def _pdeathsig() -> None:
    with contextlib.suppress(Exception):
        import ctypes  # noqa: PLC0415

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_pid(pid: int, *, grace_s: float = 10.0) -> bool:
    """SIGTERM ``pid``, wait up to ``grace_s``, then SIGKILL. True if it had to be killed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return False
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def stop_process(
    proc: subprocess.Popen[bytes], *, grace_s: float = 10.0, group: bool = False
) -> bool:
    """Stop a child we spawned and reap it. True if it had to be killed.

    ``group`` signals the child's whole process group (``spawn`` makes it a session
    leader), for a server whose own children must go with it.
    """
    if proc.poll() is not None:
        return False
    _signal(proc, signal.SIGTERM, group=group)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _signal(proc, signal.SIGKILL, group=group)
        proc.wait()
        return True
    return False


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals, *, group: bool) -> None:
    if not group:
        proc.send_signal(sig)  # a no-op once the child is reaped
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        # Field 3 is the state; "Z" is a zombie that only waits to be reaped.
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def runs_in(pid: int, workdir: Path) -> bool:
    """Whether ``pid`` is alive with ``workdir`` as its cwd: guards against a recycled pid."""
    if not pid_alive(pid):
        return False
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == workdir.resolve()
    except OSError:
        return False
