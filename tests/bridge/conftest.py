"""Fixtures for the bridge tests: a fresh simulated fleet and a bridge in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._support import SIM_CONFIG, RunningBridge, running_bridge, settings_for


@pytest.fixture
def fleet() -> Iterator[RunningFleet]:
    with serve_in_thread(SIM_CONFIG) as f:
        yield f


@pytest.fixture
async def bridge(fleet: RunningFleet) -> AsyncIterator[RunningBridge]:
    async with running_bridge(settings_for(fleet, heartbeat_interval=0.05)) as b:
        yield b


@pytest.fixture
async def client(bridge: RunningBridge) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=bridge.base_url, timeout=20) as c:
        yield c
