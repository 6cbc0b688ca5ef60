"""Fixtures for the scheduler-state tests: a ``Scheduler`` over two daemons that nothing
listens on (no daemon is contacted; a load's failure is the only I/O outcome)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.metrics import Metrics
from bridge.scheduling.decisions import DecisionLog
from bridge.scheduling.fleet import Fleet
from bridge.scheduling.scheduler import Scheduler
from bridge.settings import load_settings
from bridge.upstream import Upstream

GIB = 1024**3


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    daemons = "a=http://127.0.0.1:1?parallel=2,b=http://127.0.0.1:2?parallel=2"
    settings = load_settings({"ALB_DAEMONS": daemons}, replication=True)
    upstream = Upstream.create(settings)
    fleet = Fleet(settings.daemon_specs(), upstream, 10)
    s = Scheduler(settings, fleet, upstream, Metrics(), DecisionLog(64))
    for d in fleet.daemons.values():
        d.up, d.catalog = True, {"m": {}, "n": {}}
    fleet.get("a").loaded = {"m": {"size": GIB, "context_length": 4096}}
    s.upkeep.reconcile()
    try:
        yield s
    finally:
        await s.aclose()
        await upstream.aclose()
