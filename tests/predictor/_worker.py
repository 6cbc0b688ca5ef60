"""A real ``alb predictor`` worker for tests on the real broker (a subprocess)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from tests.services._env import spawn, stop_process, tail

__all__ = ["Worker", "unique", "wait_for_leaders"]


@dataclass
class Worker:
    bootstrap: str
    app_id: str
    topics: dict[str, str]
    env: dict[str, str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = Path("/dev/null")
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        self.log = self.workdir / f"worker-{self.starts}.log"
        argv = [sys.executable, "-m", "predictor.stream"]
        self.proc = spawn(argv, log=self.log, cwd=self.workdir, env=self.env)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=15.0)
            self.proc = None

    def check_alive(self) -> None:
        assert self.proc is not None
        assert self.proc.poll() is None, f"predictor worker exited:\n{tail(self.log)}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def wait_for_leaders(bootstrap: str, names: list[str], timeout_s: float = 30.0) -> None:
    """Until every partition of ``names`` has a leader (``ensure_topics`` returns once
    the topics exist; their leaders are elected a moment later)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            described = await admin.describe_topics(names)
            leaderless = [
                t["topic"]
                for t in described
                if t["error_code"] != 0
                or not t["partitions"]
                or any(p["leader"] < 0 for p in t["partitions"])
            ]
            if not leaderless:
                return
            assert time.monotonic() < deadline, f"no leaders after {timeout_s}s: {leaderless}"
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
