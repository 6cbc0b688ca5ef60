"""Admin API (load / unload / pin / unpin, admin scope) and the decision log."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from bridge.errors import Forbidden
from bridge.http.routes_admin import authorize
from bridge.http.state import Bridge
from bridge.metrics import Metrics
from bridge.settings import load_settings
from ollamasim.testing import RunningFleet
from tests.bridge._support import kinds, running_bridge, settings_for


async def test_load_pin_unload_and_decisions(
    fleet: RunningFleet, client: httpx.AsyncClient
) -> None:
    d = fleet.daemon("a")
    r = await client.post("/alb/v1/models/chatty/load", json={"num_ctx": 8192})
    assert r.status_code == 200, r.text
    assert r.json() == {"model": "chatty:latest", "action": "load", "daemon": "a", "num_ctx": 8192}
    ps = [e for e in d.events() if e.kind == "loaded"]
    assert ps[-1].detail["num_ctx"] == 8192
    # A request that fits the runner reuses it: the bridge sends the runner's num_ctx.
    gen = {"model": "chatty", "prompt": "hi", "stream": False, "options": {"num_ctx": 4096}}
    assert (await client.post("/api/generate", json=gen)).status_code == 200
    assert kinds(d.events(), "chatty:latest").count("load-start") == 1

    assert (await client.post("/alb/v1/models/chatty/pin")).json()["pinned"] is True
    models = (await client.get("/alb/v1/models")).json()["daemons"][0]["models"]
    (row,) = [m for m in models if m["model"] == "chatty:latest"]
    assert row["pinned"] is True
    assert row["num_ctx"] == 8192
    refused = await client.post("/alb/v1/models/chatty/unload")
    assert refused.status_code == 409
    assert "pinned" in refused.json()["error"]
    assert (await client.post("/alb/v1/models/chatty/unpin")).json()["pinned"] is False
    gone = await client.post("/alb/v1/models/chatty/unload")
    assert gone.json()["unloaded_from"] == ["a"]
    assert [e.reason for e in d.events() if e.kind == "unload"] == ["requested"]

    bad = await client.post("/alb/v1/models/chatty/load", json={"daemon": "nope"})
    assert bad.status_code == 400
    assert (await client.post("/alb/v1/models/nope/load")).status_code == 404
    assert (await client.post("/alb/v1/models/chatty/explode")).status_code == 404

    decisions = (await client.get("/alb/v1/decisions?model=chatty&limit=50")).json()["decisions"]
    got = [(x["kind"], x["reason"]) for x in decisions]
    assert ("unload", "admin") in got
    assert ("pin", "pinned") in got
    assert ("pin", "unpinned") in got
    assert ("load", "request") in got
    assert ("num_ctx", "request") in got
    assert all(x["model"] == "chatty:latest" for x in decisions)
    only = (await client.get("/alb/v1/decisions?kind=pin")).json()["decisions"]
    assert {x["kind"] for x in only} == {"pin"}


async def test_admin_token(fleet: RunningFleet) -> None:
    settings = settings_for(fleet, admin_token="s3cret")
    assert "s3cret" not in repr(settings)
    async with (
        running_bridge(settings) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=10) as c,
    ):
        assert (await c.post("/alb/v1/models/chatty/load")).status_code == 401
        wrong = {"authorization": "Bearer nope"}
        assert (await c.post("/alb/v1/models/chatty/load", headers=wrong)).status_code == 401
        ok = await c.post("/alb/v1/models/chatty/load", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        alt = await c.post("/alb/v1/models/chatty/pin", headers={"x-alb-admin-token": "s3cret"})
        assert alt.status_code == 200


def _request(host: str, headers: dict[str, str] | None = None) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "client": (host, 5000),
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    return Request(scope)


def test_without_a_token_admin_routes_answer_only_loopback_clients() -> None:
    bridge = Bridge(load_settings({}), Metrics(), None)
    authorize(bridge, _request("127.0.0.1"))
    authorize(bridge, _request("::1"))
    with pytest.raises(Forbidden, match="ALB_ADMIN_TOKEN"):
        authorize(bridge, _request("10.1.2.3"))


async def test_pins_from_configuration_are_loaded_at_start_and_never_idle_unloaded(
    fleet: RunningFleet,
) -> None:
    settings = settings_for(
        fleet, pinned="chatty@a", reclaim="idle", idle_unload_after=0.2, refresh_interval=0.1
    )
    async with (
        running_bridge(settings) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=10) as c,
    ):
        d = fleet.daemon("a")
        await asyncio.to_thread(
            d.wait_for_event, lambda ev: "loaded" in kinds(ev, "chatty:latest"), 5
        )
        other = {"model": "other", "prompt": "hi", "stream": False}
        assert (await c.post("/api/generate", json=other)).status_code == 200
        await asyncio.to_thread(
            d.wait_for_event, lambda ev: "unload" in kinds(ev, "other:latest"), 5
        )
        assert "unload" not in kinds(d.events(), "chatty:latest")
