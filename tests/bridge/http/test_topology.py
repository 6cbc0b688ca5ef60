"""Secrets and topology (issue #12, finding 9): a daemon URL with credentials is parsed
right and never shown; URLs and host names are for admin scope only."""

from __future__ import annotations

import base64
import socket

import httpx

from bridge.settings import load_settings, parse_daemons
from ollamasim.testing import RunningFleet
from tests.bridge._support import running_bridge

TOKEN = "admin-secret"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_credentials_in_a_daemon_url_are_parsed_and_kept_out_of_sight() -> None:
    [spec] = parse_daemons("gpu0=http://alice:hunter%32@127.0.0.1:18090?parallel=3", 1, 3)
    assert spec.url == "http://127.0.0.1:18090"
    assert spec.parallel == 3
    assert spec.authorization == "Basic " + base64.b64encode(b"alice:hunter2").decode()
    assert spec.shown_url == "http://***@127.0.0.1:18090"
    assert "hunter" not in repr(spec)
    [plain] = parse_daemons("http://127.0.0.1:18090", 1, 3)
    assert plain.authorization is None
    assert plain.shown_url == plain.url
    # OLLAMA_HOST keeps its port rules with credentials too.
    [host] = load_settings({"OLLAMA_HOST": "http://bob:pw@10.0.0.5"}).daemon_specs()
    assert host.url == "http://10.0.0.5:11434"
    assert host.authorization is not None


async def test_urls_and_host_names_only_under_admin_scope(fleet: RunningFleet) -> None:
    sim = fleet.daemons[0]
    port = sim.base_url.rsplit(":", 1)[1]
    dead = _closed_port()
    daemons = (
        f"a=http://alice:hunter2@127.0.0.1:{port}?parallel=2,"
        f"gone=http://carol:swordfish@127.0.0.1:{dead}"
    )
    settings = load_settings({"ALB_DAEMONS": daemons, "ALB_ADMIN_TOKEN": TOKEN})
    async with (
        running_bridge(settings) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=20) as c,
    ):
        r = await c.post("/api/generate", json={"model": "chatty", "prompt": "hi", "stream": False})
        assert r.status_code == 200, r.text
        anonymous = [
            (await c.get(path)).text
            for path in ("/alb/v1/models", "/readyz", "/alb/v1/events", "/alb/v1/predictor")
        ]
        for text in anonymous:
            for secret in ("hunter2", "swordfish", "alice", "127.0.0.1", socket.gethostname()):
                assert secret not in text, (secret, text)
        models = (await c.get("/alb/v1/models")).json()
        assert [d["name"] for d in models["daemons"]] == ["a", "gone"]
        ready = (await c.get("/readyz")).json()
        assert "daemon gone" in ready["daemons"]["gone"]["error"]

        admin = {"authorization": f"Bearer {TOKEN}"}
        seen = (await c.get("/alb/v1/models", headers=admin)).json()
        assert [d["url"] for d in seen["daemons"]] == [
            f"http://***@127.0.0.1:{port}",
            f"http://***@127.0.0.1:{dead}",
        ]
        ready = (await c.get("/readyz", headers=admin)).text
        assert f"http://***@127.0.0.1:{dead}" in ready
        assert (await c.get("/alb/v1/events", headers=admin)).json()["producer"]
        decisions = (await c.get("/alb/v1/decisions")).text
        for secret in ("hunter2", "swordfish"):
            assert secret not in decisions + ready
