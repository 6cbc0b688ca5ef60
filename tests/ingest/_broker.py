"""A dedicated Kafka broker that a test may stop and start again on the same port and data.

The harness's ``Broker.stop`` removes its data; an outage test needs the broker to
come back with its log intact. So this starts one through the harness, remembers
its exact command line (``/proc/<pid>/cmdline``), stops the JVM with SIGTERM while
keeping the directory, and respawns the same command later (with a shorter broker
session, so the new incarnation is not held back by the old one's registration).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tests.services import kafka_broker
from tests.services._env import provide, spawn, stop_pid, stop_process


class RestartableBroker:
    def __init__(self) -> None:
        self._broker = provide(kafka_broker.start, "Kafka (dedicated outage broker)")
        cmdline = Path(f"/proc/{self._broker.pid}/cmdline").read_bytes()
        self._argv = [part.decode() for part in cmdline.split(b"\0") if part]
        self._restarted: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return self._broker.bootstrap

    def stop(self) -> None:
        """SIGTERM the JVM and wait for it to exit; the data stays."""
        if self._restarted is not None:
            stop_process(self._restarted, grace_s=20)
            self._restarted = None
        else:
            stop_pid(self._broker.pid, grace_s=20)

    async def start(self, timeout_s: float = 60) -> float:
        """Run the same broker again; return seconds until a client saw it ready."""
        started = time.monotonic()
        workdir = self._broker.workdir
        # The restarted controller keeps the old broker registration until its session
        # expires (9 s by default): shorten it, or every restart waits for it.
        with (workdir / "server.properties").open("a") as config:
            config.write("\nbroker.session.timeout.ms=1500\nbroker.heartbeat.interval.ms=300\n")
        self._restarted = spawn(self._argv, log=workdir / "restart.log", cwd=workdir)
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
            try:
                await admin.start()
                if (await admin.describe_cluster()).get("brokers"):
                    return time.monotonic() - started
            except (KafkaError, OSError, TimeoutError):
                pass
            finally:
                await admin.close()
            await asyncio.sleep(0.2)
        raise TimeoutError(f"restarted broker not ready in {timeout_s}s")

    def close(self) -> None:
        if self._restarted is not None:
            stop_process(self._restarted, grace_s=10)
        self._broker.stop(grace_s=10)
