"""Redis stays off the warm request path (issue #15): a bridge in shared mode serves
requests for a loaded model without a single Redis command."""

from __future__ import annotations

import uuid

import httpx
import pytest
from redis.asyncio import Redis

from ollamasim.testing import running_fleet
from tests.bridge._support import SIM_CONFIG, running_bridge, settings_for

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def _commands(redis: Redis) -> int:
    """Commands the server has processed, minus the INFO calls that read it."""
    stats = await redis.info("stats")
    return int(stats["total_commands_processed"])


async def test_warm_requests_make_no_redis_call(redis_url: str) -> None:
    async with running_fleet(SIM_CONFIG) as fleet:
        settings = settings_for(
            fleet,
            redis_url=redis_url,
            coord_namespace=f"alb-warm-{uuid.uuid4().hex[:8]}",
            lease_ttl=60.0,  # rounds every 20 s: none during the measurement
        )
        admin = Redis.from_url(redis_url)
        try:
            async with (
                running_bridge(settings) as b,
                httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
            ):
                coord = (await c.get("/alb/v1/models")).json()["coordination"]
                assert coord["mode"] == "shared"
                body = {"model": "chatty", "prompt": "x", "stream": False}
                assert (await c.post("/api/generate", json=body)).status_code == 200  # loads
                before = await _commands(admin)
                for _ in range(200):
                    assert (await c.post("/api/generate", json=body)).status_code == 200
                after = await _commands(admin)
        finally:
            await admin.aclose()
    # One INFO is counted between the two reads; nothing else may be.
    assert after - before <= 1, f"{after - before - 1} Redis commands for 200 warm requests"
