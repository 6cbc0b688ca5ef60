"""``alb serve --workers N``: N processes on one port (SO_REUSEPORT), replicas of each
other through a real Redis."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest

from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._procs import ALB, Proc, clean_env, free_port
from tests.bridge._support import SIM_CONFIG

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]


@pytest.fixture
def fleet() -> Iterator[RunningFleet]:
    with serve_in_thread(SIM_CONFIG) as f:
        yield f


def test_two_workers_share_the_port_and_the_fleet_and_stop_together(
    fleet: RunningFleet, redis_url: str
) -> None:
    port = free_port()
    env = clean_env(
        ALB_DAEMONS=f"a={fleet.daemon('a').base_url}?parallel=2",
        ALB_REDIS_URL=redis_url,
        ALB_COORD_NAMESPACE=f"alb-workers-{uuid.uuid4().hex[:8]}",
        ALB_LEASE_TTL="1.5",
        ALB_REPLICA_ID="box",
    )
    proc = Proc([ALB, "serve", "--workers", "2", "--port", str(port)], env)
    try:
        proc.wait_line("bridge listening on", timeout=30)
        if not any(line.startswith("worker 1 ready") for line in proc.output):
            proc.wait_line("worker 1 ready", timeout=30)  # either may come first
        banner = "".join(proc.output)
        assert "workers: 2 processes on this port" in banner
        url = f"http://127.0.0.1:{port}"
        seen: dict[str, int] = {}
        for _ in range(40):  # a new connection each time: the kernel picks a worker
            with httpx.Client(base_url=url, timeout=10) as c:
                coord = c.get("/alb/v1/models").json()["coordination"]
                seen[coord["replica"]] = coord["replicas"]
                assert (
                    c.post(
                        "/api/generate", json={"model": "chatty", "prompt": "x", "stream": False}
                    ).status_code
                    == 200
                )
            if len(seen) == 2 and set(seen.values()) == {2}:
                break
        assert set(seen) == {"box-w0", "box-w1"}, seen
        assert set(seen.values()) == {2}
        loads = [e for e in fleet.daemon("a").events() if e.kind == "loaded"]
        assert len(loads) == 1  # one owner loaded it; the other worker followed
        proc.p.send_signal(signal.SIGTERM)
        assert proc.p.wait(30) == 0
    finally:
        proc.stop()


def test_workers_without_redis_are_refused_with_one_line() -> None:
    port = free_port()
    got = subprocess.run(
        [ALB, "serve", "--workers", "2", "--port", str(port)],
        env=clean_env(ALB_DAEMONS="a=http://127.0.0.1:1"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert got.returncode == 2
    assert got.stderr.strip().splitlines() == [
        "alb serve: --workers needs ALB_REDIS_URL (the workers share the daemons through it; "
        "`make run-cluster` starts a local Redis)"
    ]
