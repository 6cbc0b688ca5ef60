"""The by-hand side of the harness: ``scripts/kafka`` and ``scripts/redis``.

``start`` leaves the service running (detached from this process) and records it in a
small JSON state file; ``status`` and ``stop`` read that file and act only when the
recorded pid still runs in the recorded temp dir (a recycled pid is left alone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from tests.services._env import ServiceUnavailable, runs_in
from tests.services._process import ServiceProcess

H = TypeVar("H", bound=ServiceProcess)


def _load(state: Path, kind: type[H]) -> H | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(state.read_text())
        return kind(
            pid=int(data["pid"]),
            port=int(data["port"]),
            workdir=Path(data["workdir"]),
            startup_s=float(data["startup_s"]),
        )
    return None


def _running(state: Path, kind: type[H]) -> H | None:
    handle = _load(state, kind)
    return handle if handle is not None and runs_in(handle.pid, handle.workdir) else None


def start(state: Path, kind: type[H], launch: Callable[[], H], label: str) -> int:
    """Start the service unless the state file names a running one; print its address."""
    handle = _running(state, kind)
    if handle is None:
        handle = launch()
        state.parent.mkdir(parents=True, exist_ok=True)
        fields = {"pid": handle.pid, "port": handle.port, "workdir": str(handle.workdir)}
        state.write_text(json.dumps({**fields, "startup_s": round(handle.startup_s, 2)}) + "\n")
        took = f"{handle.startup_s:.2f}s"
        print(f"{label} started in {took} (pid {handle.pid}, log {handle.log})", file=sys.stderr)
    else:
        print(f"{label} already running (pid {handle.pid})", file=sys.stderr)
    print(handle.export)
    return 0


def stop(state: Path, kind: type[H], label: str) -> int:
    """Stop the recorded service (if it still runs) and forget it."""
    handle = _load(state, kind)
    if handle is not None:
        handle.stop()
        state.unlink(missing_ok=True)
    print(f"{label} stopped" if handle else f"{label} not running", file=sys.stderr)
    return 0


def status(state: Path, kind: type[H], label: str) -> int:
    """Print the address of the running service; exit 3 (LSB "not running") if none."""
    handle = _running(state, kind)
    if handle is None:
        print(f"{label} not running", file=sys.stderr)
        return 3
    print(f"{label} running (pid {handle.pid}, log {handle.log})", file=sys.stderr)
    print(handle.export)
    return 0


def commands(
    state: Path, kind: type[H], launch: Callable[[], H], label: str
) -> dict[str, Callable[[], int]]:
    """``start``, ``stop`` and ``status`` of the service ``launch`` starts, kept in ``state``."""
    return {
        "start": lambda: start(state, kind, launch, label),
        "stop": lambda: stop(state, kind, label),
        "status": lambda: status(state, kind, label),
    }


def run(argv: list[str] | None, prog: str, commands: Mapping[str, Callable[[], int]]) -> int:
    """Parse ``argv`` (one of ``commands``), run it, report ``ServiceUnavailable`` as exit 1."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("command", choices=list(commands))
    args = parser.parse_args(argv)
    try:
        return commands[args.command]()
    except ServiceUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
