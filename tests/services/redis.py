"""pytest plugin: the session fixture ``redis_url`` ("redis://host:port/db").

``REDIS_URL`` when set; else a throwaway local ``redis-server`` (``redis_server``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.services import redis_server
from tests.services._env import provide
from tests.services._report import note


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a real Redis for this test run."""
    given = os.environ.get("REDIS_URL")
    if given:
        note(request.config, "redis: REDIS_URL from the environment")
        yield given
        return
    server = provide(redis_server.start, "Redis")
    note(
        request.config, f"redis: local redis-server at {server.url}, up in {server.startup_s:.2f}s"
    )
    try:
        yield server.url
    finally:
        server.stop()
