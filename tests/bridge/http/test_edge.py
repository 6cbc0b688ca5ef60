"""Issue #12, finding 5: Host and Origin checks (Ollama's), CORS preflight, trusted proxies.

Each reproducer of the probe runs against the real bridge on a real socket, served as
``alb serve`` serves it; the XFF one also against ``alb serve`` itself with uvicorn's
``FORWARDED_ALLOW_IPS=*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bridge.http.edge import (
    DEFAULT_ORIGINS,
    HostRules,
    OriginRules,
    TrustedProxies,
    check_origins,
    listens_on_loopback,
    split_host,
)
from bridge.settings import SettingsError, load_settings
from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._edge_support import exchange, port_of
from tests.bridge._support import SIM_CONFIG, RunningBridge, running_bridge, settings_for

ROOT = Path(__file__).resolve().parents[3]
EVIL = "https://evil.example"


@pytest.fixture
async def edge(fleet: RunningFleet) -> AsyncIterator[RunningBridge]:
    settings = settings_for(fleet, origins="https://app.example.com,https://*.example.net")
    async with running_bridge(settings) as b:
        yield b


def _pins(b: RunningBridge) -> set[tuple[str, str | None]]:
    return set(b.app.state.bridge.rt().scheduler.pins)


# --- Host -------------------------------------------------------------------------------


async def test_a_foreign_host_is_refused_in_the_api_shape(edge: RunningBridge) -> None:
    port = port_of(edge)
    native = await exchange(port, "GET", "/api/tags", headers={"Host": "evil.com"})
    assert native.status == 403
    err = native.json()
    assert isinstance(err, dict)
    assert isinstance(err["error"], str)
    assert "evil.com" in err["error"]
    openai = await exchange(port, "GET", "/v1/models", headers={"Host": "evil.com:8080"})
    assert openai.status == 403
    body = openai.json()
    assert isinstance(body, dict)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    # DNS rebinding: the page's own origin is "same origin" to CORS; the Host check stops it.
    rebound = await exchange(
        port,
        "POST",
        "/alb/v1/models/chatty/pin",
        headers={"Host": "evil.com:8080", "Origin": "http://evil.com:8080"},
        body=b"{}",
    )
    assert rebound.status == 403
    assert _pins(edge) == set()


@pytest.mark.parametrize(
    "host",
    [
        None,  # the default: 127.0.0.1:<port>
        "localhost",
        "LOCALHOST:11434",
        "127.0.0.1",
        "[::1]:8080",
        "10.1.2.3:80",
        "192.168.1.5",
        "0.0.0.0",
        "gpu-box.local",
        "ollama.internal:8080",
        "app.localhost",
        socket.gethostname(),
    ],
)
async def test_local_hosts_are_answered(edge: RunningBridge, host: str | None) -> None:
    headers = {} if host is None else {"Host": host}
    answer = await exchange(port_of(edge), "GET", "/api/version", headers=headers)
    assert answer.status == 200, answer.body


async def test_extra_hosts_and_a_non_loopback_listener(fleet: RunningFleet) -> None:
    settings = settings_for(fleet, allowed_hosts="bridge.example.com,*.corp.example")
    async with running_bridge(settings) as b:
        port = port_of(b)
        for host in ("bridge.example.com", "a.corp.example:443"):
            assert (await exchange(port, "GET", "/", headers={"Host": host})).status == 200
        assert (await exchange(port, "GET", "/", headers={"Host": "corp.example"})).status == 403
    # Ollama checks Hosts only when it listens on loopback.
    async with running_bridge(settings_for(fleet, host="0.0.0.0", allow_open=True)) as b:
        answer = await exchange(port_of(b), "GET", "/api/version", headers={"Host": "evil.com"})
        assert answer.status == 200


# --- Origin -----------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["pin", "unpin", "unload", "load"])
async def test_cross_site_simple_posts_to_the_admin_routes_are_refused(
    edge: RunningBridge, fleet: RunningFleet, action: str
) -> None:
    """The probe's reproducer: a text/plain POST a page on another site can send."""
    answer = await exchange(
        port_of(edge),
        "POST",
        f"/alb/v1/models/chatty/{action}",
        headers={"Origin": EVIL, "Content-Type": "text/plain"},
        body=b"{}",
    )
    assert answer.status == 403
    err = answer.json()
    assert isinstance(err, dict)
    assert "evil.example" in err["error"]
    assert _pins(edge) == set()
    assert not [e for e in fleet.daemon("a").events() if e.kind in ("load-start", "unload")]


async def test_cross_site_inference_is_refused_in_each_api_shape(edge: RunningBridge) -> None:
    port = port_of(edge)
    gen = b'{"model":"chatty","prompt":"hi","stream":false}'
    native = await exchange(port, "POST", "/api/generate", headers={"Origin": EVIL}, body=gen)
    assert native.status == 403
    assert isinstance(native.json(), dict)
    chat = b'{"model":"chatty","messages":[{"role":"user","content":"hi"}]}'
    openai = await exchange(
        port, "POST", "/v1/chat/completions", headers={"Origin": EVIL}, body=chat
    )
    assert openai.status == 403
    body = openai.json()
    assert isinstance(body, dict)
    assert body["error"]["type"] == "api_error"


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost",
        "http://localhost:3000",
        "https://127.0.0.1:8443",
        "http://0.0.0.0:5173",
        "app://obsidian.md",
        "file://",
        "tauri://localhost",
        "vscode-webview://abc123",
        "vscode-file://vscode-app",
        "https://app.example.com",  # ALB_ORIGINS
        "https://docs.example.net",  # ALB_ORIGINS wildcard
    ],
)
async def test_allowed_origins_get_cors_headers(edge: RunningBridge, origin: str) -> None:
    answer = await exchange(port_of(edge), "GET", "/api/version", headers={"Origin": origin})
    assert answer.status == 200
    assert answer.header("access-control-allow-origin") == origin
    assert "Origin" in answer.all("vary")


async def test_same_origin_is_not_a_cors_request(edge: RunningBridge) -> None:
    port = port_of(edge)
    # gin-contrib/cors: Origin == http(s):// + Host is let through without CORS headers.
    answer = await exchange(
        port, "GET", "/api/version", headers={"Origin": f"http://127.0.0.1:{port}"}
    )
    assert answer.status == 200
    assert answer.header("access-control-allow-origin") is None


async def test_preflight_is_answered_for_allowed_origins_only(edge: RunningBridge) -> None:
    port = port_of(edge)
    ask = {
        "Origin": "http://localhost:5173",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization,x-stainless-os",
    }
    answer = await exchange(port, "OPTIONS", "/v1/chat/completions", headers=ask)
    assert answer.status == 204
    assert answer.header("access-control-allow-origin") == "http://localhost:5173"
    assert "POST" in (answer.header("access-control-allow-methods") or "").split(",")
    allowed = (answer.header("access-control-allow-headers") or "").lower().split(",")
    assert {"content-type", "authorization", "x-stainless-os"} <= set(allowed)
    assert answer.header("access-control-max-age") == "43200"
    assert set(answer.all("vary")) >= {"Origin", "Access-Control-Request-Method"}
    refused = await exchange(port, "OPTIONS", "/api/chat", headers={**ask, "Origin": EVIL})
    assert refused.status == 403


async def test_any_origin_with_a_star(fleet: RunningFleet) -> None:
    async with running_bridge(settings_for(fleet, origins="*")) as b:
        answer = await exchange(port_of(b), "GET", "/api/version", headers={"Origin": EVIL})
        assert answer.status == 200
        assert answer.header("access-control-allow-origin") == "*"


# --- trusted proxies --------------------------------------------------------------------


async def test_forwarded_for_is_read_from_trusted_proxies_only(fleet: RunningFleet) -> None:
    """A local proxy (trusted) appends the real client to whatever the client sent."""
    async with running_bridge(settings_for(fleet, trusted_proxies="127.0.0.1")) as b:
        port = port_of(b)
        path = "/alb/v1/models/chatty/unpin"
        forged = {"X-Forwarded-For": "127.0.0.1, 198.51.100.7"}
        assert (await exchange(port, "POST", path, headers=forged)).status == 403
        remote = {"X-Forwarded-For": "198.51.100.7"}
        assert (await exchange(port, "POST", path, headers=remote)).status == 403
        # A local client through the proxy, and one that talks to the bridge directly.
        local = {"X-Forwarded-For": "127.0.0.1"}
        assert (await exchange(port, "POST", path, headers=local)).status == 200
        assert (await exchange(port, "POST", path)).status == 200
    # No trusted proxies (the default): the header is not read at all.
    async with running_bridge(settings_for(fleet)) as b:
        answer = await exchange(port_of(b), "POST", path, headers=remote)
        assert answer.status == 200


def _outside_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (None: there is none)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.123", 9))  # no packet is sent for a UDP connect
        address = str(s.getsockname()[0])
        if not ipaddress.ip_address(address).is_loopback:
            return address
    return None


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _alb_serve(fleet: RunningFleet, host: str, **env: str) -> Iterator[int]:
    port = _free_port(host)
    daemons = ",".join(f"{d.name}={d.base_url}?parallel=2" for d in fleet.daemons)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("ALB_", "OLLAMA_"))}
    child_env.update({"ALB_DAEMONS": daemons, "ALB_EVENTS": "false", "ALB_ALLOW_OPEN": "true"})
    child_env.update(env)
    alb = str(Path(sys.executable).parent / "alb")
    args = [alb, "serve", "--host", host, "--port", str(port)]
    proc = subprocess.Popen(
        args, cwd=ROOT, env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{host}:{port}/api/version", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None, "alb serve exited"
            time.sleep(0.1)
        yield port
    finally:
        proc.kill()
        proc.wait(5)


def test_alb_serve_ignores_forwarded_allow_ips() -> None:
    """The probe's reproducer: with uvicorn's FORWARDED_ALLOW_IPS=*, a client off the
    machine sent ``X-Forwarded-For: 127.0.0.1`` and passed the loopback check."""
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with (
        serve_in_thread(SIM_CONFIG) as fleet,
        _alb_serve(fleet, "0.0.0.0", FORWARDED_ALLOW_IPS="*") as port,
    ):
        answer = asyncio.run(
            exchange(
                port,
                "POST",
                "/alb/v1/models/chatty/unpin",
                headers={"X-Forwarded-For": "127.0.0.1"},
                host=address,
                source=address,
            )
        )
        assert answer.status == 403, answer.body
        err = answer.json()
        assert isinstance(err, dict)
        assert "loopback" in err["error"]


# --- the rules, pure --------------------------------------------------------------------


def test_origin_rules_follow_gin_cors() -> None:
    rules = OriginRules(["https://*.example.net", " HTTPS://Upper.Example "])
    assert rules.allows("http://localhost:11434")
    assert rules.allows("https://upper.example")
    assert rules.allows("https://a.example.net")
    assert not rules.allows("https://example.net")
    assert not rules.allows("http://localhost.evil.example")
    assert not rules.allows("chrome-extension://abc")  # only when configured
    assert not rules.allows("null")
    assert len(DEFAULT_ORIGINS) == 17
    with pytest.raises(ValueError, match="only one"):
        check_origins("https://*.*.example")
    with pytest.raises(ValueError, match="http"):
        check_origins("evil.example")
    with pytest.raises(SettingsError, match="ALB_ORIGINS"):
        load_settings({"ALB_ORIGINS": "https://*.a.*"})
    with pytest.raises(SettingsError, match="ALB_TRUSTED_PROXIES"):
        load_settings({"ALB_TRUSTED_PROXIES": "not-an-ip"})


def test_host_rules_follow_ollama() -> None:
    public = ipaddress.ip_address("203.0.113.8")
    rules = HostRules(hostname="Box", addresses=frozenset({public}))
    for ok in ("", "box", "BOX:80", "203.0.113.8", "172.16.0.1", "[fd00::1]:1", "::ffff:127.0.0.1"):
        assert rules.allows(ok), ok
    for bad in ("evil.com", "203.0.113.9", "localhost.evil.com", "169.254.1.1", "local"):
        assert not rules.allows(bad), bad
    assert split_host("[::1]:8080") == "::1"
    assert split_host("::1") == "::1"
    assert split_host("h:80") == "h"
    assert listens_on_loopback("127.0.0.2")
    assert listens_on_loopback("localhost")
    assert not listens_on_loopback("0.0.0.0")


def test_trusted_proxies_take_the_right_most_untrusted_entry() -> None:
    proxies = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    assert proxies.client("203.0.113.1", [b"127.0.0.1"]) == "203.0.113.1"  # not trusted
    assert proxies.client("127.0.0.1", [b"127.0.0.1, 198.51.100.7, 10.1.1.1"]) == "198.51.100.7"
    assert proxies.client("127.0.0.1", [b"198.51.100.7", b"10.0.0.2"]) == "198.51.100.7"
    assert proxies.client("127.0.0.1", [b"10.0.0.3, 127.0.0.1"]) == "10.0.0.3"
    assert proxies.client("127.0.0.1", [b"garbage"]) == "unknown"
    assert proxies.client("127.0.0.1", []) == "127.0.0.1"
