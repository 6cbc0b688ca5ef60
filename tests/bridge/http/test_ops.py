"""Operations endpoints: health, readiness, metrics, model state, Ollama's root."""

from __future__ import annotations

import asyncio

import httpx

from ollamasim.testing import RunningFleet


async def test_health_readiness_and_metrics(fleet: RunningFleet, client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["daemons"]["a"]["up"] is True
    root = await client.get("/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    await client.post("/api/chat", json={"model": "chatty", "messages": [], "stream": False})
    metrics = (await client.get("/metrics")).text
    assert 'alb_requests_total{endpoint="/api/chat",model="chatty:latest",status="200"} 1.0' in (
        metrics
    )
    assert 'alb_loads_total{outcome="ok",reason="request"} 1.0' in metrics
    # The request waited for the model's first load, and said so.
    assert 'alb_cold_starts_total{cause="first"} 1.0' in metrics
    assert 'alb_cold_starts_total{cause="gone"} 0.0' in metrics
    models = (await client.get("/alb/v1/models")).json()["daemons"][0]
    (chatty,) = [m for m in models["models"] if m["model"] == "chatty:latest"]
    assert chatty["state"] == "loaded"
    assert chatty["context_length"] > 0
    assert (chatty["in_flight"], chatty["queue_depth"], chatty["slots"]) == (0, 0, 2)
    ps = (await client.get("/api/ps")).json()["models"]
    assert [m["model"] for m in ps] == ["chatty:latest"]
    await asyncio.to_thread(fleet.daemon("a").crash)
    await asyncio.sleep(1.1)  # readiness is re-checked at most once a second
    down = await client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["daemons"]["a"]["up"] is False
    assert "error" in down.json()["daemons"]["a"]
    r = await client.post("/api/chat", json={"model": "chatty", "messages": []})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
