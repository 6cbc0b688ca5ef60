"""The status page ``/alb/ui`` (issue #17).

Fast: the three files are served with the page's security headers, open with
``ALB_AUTH=keys`` while the JSON they read is not, and the script fetches only paths on
its own origin; ``/alb/v1/predictor`` lists the embedded predictor's transitions and
``/alb/v1/models`` flags prefetched runners.

Slow: Debian's Chromium, headless, driven by Playwright (pointed at that binary; no
browser is downloaded), loads the page in front of a bridge with traffic (runners
serving and queueing, a pinned one, decisions, the predictor's transitions), checks what
it shows and that no request left the bridge's origin, saves a screenshot (the
README's, ``docs/status-page.png``, with ``ALB_UPDATE_SCREENSHOT=1``), then gives the
admin token and pins a model from the page. A missing Chromium or Playwright skips
locally and fails under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from bridge.http.routes_ui import CSP, FILES
from bridge.policy.keys import parse_scopes
from bridge.tenancy import keyring
from bridge.tenancy.store import SqliteKeys
from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._support import GIB, running_bridge, settings_for
from tests.services._env import REPO_ROOT, unavailable

if TYPE_CHECKING:
    from playwright.async_api import Page

UI_DIR = REPO_ROOT / "bridge" / "http" / "ui"
#: The README's screenshot, rewritten only when asked (``ALB_UPDATE_SCREENSHOT=1``): a
#: test run leaves the tree as it found it.
README_SCREENSHOT = REPO_ROOT / "docs" / "status-page.png"
ADMIN_TOKEN = "ui-admin-token"
S1 = {"X-ALB-Session": "ui-s1"}


async def test_the_page_files_are_served_with_a_strict_policy(
    client: httpx.AsyncClient,
) -> None:
    for path, (name, media) in FILES.items():
        r = await client.get(path)
        assert r.status_code == 200, path
        assert r.content == (UI_DIR / name).read_bytes()
        assert r.headers["content-type"] == media
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-cache"
        again = await client.get(path, headers={"If-None-Match": r.headers["etag"]})
        assert (again.status_code, again.content) == (304, b"")
        assert again.headers["content-security-policy"] == CSP
    policy = dict(p.strip().split(" ", 1) for p in CSP.split(";"))
    assert policy["default-src"] == "'none'"
    for kind in ("script-src", "style-src", "connect-src"):
        assert policy[kind] == "'self'", kind  # no 'unsafe-inline', no other host
    assert policy["frame-ancestors"] == "'none'"


def test_the_page_loads_nothing_from_elsewhere() -> None:
    html = (UI_DIR / "index.html").read_text()
    js = (UI_DIR / "app.js").read_text()
    css = (UI_DIR / "style.css").read_text()
    # No inline script or style (the CSP would refuse them), no external resource.
    assert re.findall(r"<script[^>]*>", html) == ['<script src="ui/app.js" defer>']
    assert "<style" not in html
    assert " style=" not in html
    assert re.search(r"\son\w+=", html) is None  # no inline event handlers
    for text in (html, js, css):
        assert re.search(r"(https?:)?//[\w.-]+\.[a-z]", text) is None
        assert "@import" not in text
        assert "url(" not in text
    assert html.count("data:") == 1  # the empty favicon
    # Every fetch goes to BASE + a path of this bridge's JSON API.
    fetched = re.findall(r"fetch\(([^,)]+)", js)
    assert fetched == ["BASE + path", "BASE + path"]
    paths = re.findall(r"getJSON\(([^)]+)\)", js)
    assert {p.strip("`\"'").split("?")[0] for p in paths if p != "path"} == {
        "/alb/v1/models",
        "/alb/v1/decisions",
        "/alb/v1/events",
        "/alb/v1/predictor",
    }
    assert "innerHTML" not in js  # data goes in as text
    assert "localStorage" not in js  # the credential lives in sessionStorage only
    assert "eval(" not in js
    assert "new Function" not in js


async def test_the_shell_is_open_with_keys_but_the_data_is_not(
    fleet: RunningFleet, tmp_path: Path
) -> None:
    settings = settings_for(
        fleet, auth="keys", keys_file=str(tmp_path / "keys.sqlite"), admin_token=ADMIN_TOKEN
    )
    async with running_bridge(settings) as b, httpx.AsyncClient(base_url=b.base_url) as c:
        for path in FILES:
            assert (await c.get(path)).status_code == 200, path
        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for path in ("/alb/v1/models", "/alb/v1/predictor", "/alb/v1/events"):
            assert (await c.get(path)).status_code == 401, path
            assert (await c.get(path, headers=bearer)).status_code == 200, path
        assert (await c.get("/alb/v1/decisions")).status_code == 401
        assert (await c.get("/alb/ui/nothing-here")).status_code == 404


async def test_the_predictor_endpoint_lists_the_top_transitions(
    client: httpx.AsyncClient,
) -> None:
    for model in ("chatty", "other", "chatty", "other", "chatty"):
        r = await client.post(
            "/api/generate",
            json={"model": model, "prompt": "hi", "stream": False},
            headers=S1,
        )
        assert r.status_code == 200, r.text
    body: dict[str, Any] = {}
    for _ in range(200):  # the embedded predictor reads the access log off the bus
        body = (await client.get("/alb/v1/predictor", params={"limit": 5})).json()
        if len(body["transitions"]) == 2:
            break
        await asyncio.sleep(0.02)
    assert body["source"] == "embedded"
    assert body["window"] == {"kind": "time", "minutes": 10}
    assert body["models_seen"] == 2
    pairs = {(t["from"], t["to"]): t for t in body["transitions"]}
    assert set(pairs) == {("chatty:latest", "other:latest"), ("other:latest", "chatty:latest")}
    assert pairs["chatty:latest", "other:latest"]["count"] == 2
    assert all(0 < t["probability"] <= 1 for t in body["transitions"])
    one = (await client.get("/alb/v1/predictor", params={"limit": "1"})).json()
    assert len(one["transitions"]) == 1
    assert (await client.get("/alb/v1/predictor", params={"limit": "x"})).status_code == 200
    rows = (await client.get("/alb/v1/models")).json()["daemons"][0]["models"]
    assert {m["model"]: m["prefetched"] for m in rows} == {
        "chatty:latest": False,
        "other:latest": False,
    }


async def test_without_events_the_predictor_is_off(fleet: RunningFleet) -> None:
    async with (
        running_bridge(settings_for(fleet, events=False)) as b,
        httpx.AsyncClient(base_url=b.base_url) as c,
    ):
        body = (await c.get("/alb/v1/predictor")).json()
    assert body == {"source": "off", "models_seen": 0, "transitions": []}


# --- the page in a real browser --------------------------------------------------------

#: "chatty" generates slowly (a streamed answer takes ~30 s unless num_predict cuts it),
#: so four streams hold its two slots and queue two more while the page is looked at.
UI_SIM: dict[str, Any] = {
    "time_scale": 0.1,
    "gen_tokens_per_s": 2000,
    "prefill_tokens_per_s": 100000,
    "models": [
        {
            "name": "chatty",
            "size": 3 * GIB,
            "response_tokens": 3000,
            "gen_tokens_per_s": 10,
            "capabilities": ["completion"],
        },
        {"name": "other", "size": 2 * GIB, "response_tokens": 4, "capabilities": ["completion"]},
        {"name": "vec", "size": GIB, "capabilities": ["embedding"], "embedding_length": 8},
    ],
    "daemons": [{"name": "a", "memory": 16 * GIB, "load_fixed_s": 2.0, "num_parallel": 2}],
}


def _chromium() -> str:
    try:
        done = subprocess.run(
            [str(REPO_ROOT / "scripts" / "chromium"), "path"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except OSError as exc:
        unavailable(f"scripts/chromium path failed: {exc}")
    if done.returncode != 0:
        unavailable("Chromium not found: run `scripts/chromium install` (apt-get install chromium)")
    return done.stdout.strip()


async def _stream(client: httpx.AsyncClient) -> None:
    async with client.stream(
        "POST", "/api/generate", json={"model": "chatty", "prompt": "tell me more"}, headers=S1
    ) as r:
        async for _ in r.aiter_bytes():
            pass


@contextlib.asynccontextmanager
async def _traffic(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Short requests from one session (decisions, transitions), a pinned model, then four
    long streams of "chatty": two in flight, two queued, until the block ends."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as c:
        for model in ("chatty", "other", "chatty", "other", "chatty", "other"):
            r = await c.post(
                "/api/generate",
                json={
                    "model": model,
                    "prompt": "hi",
                    "stream": False,
                    "options": {"num_predict": 1},
                },
                headers=S1,
            )
            assert r.status_code == 200, r.text
        r = await c.post(
            "/alb/v1/models/vec/pin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert r.status_code == 200, r.text
        streams = [asyncio.create_task(_stream(c)) for _ in range(4)]
        try:
            for _ in range(500):
                rows = (await c.get("/alb/v1/models")).json()["daemons"][0]["models"]
                chatty = next(m for m in rows if m["model"] == "chatty:latest")
                if (chatty["in_flight"], chatty["queue_depth"]) == (2, 2):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"chatty never had 2 in flight and 2 queued: {chatty}")
            yield c
        finally:
            for task in streams:
                task.cancel()
            for task in streams:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@dataclass
class _Watched:
    """A page of a fresh headless Chromium, and what it did: the URLs it requested, its
    uncaught script errors and the console's error lines."""

    page: Page
    requested: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def _browser_page() -> AsyncIterator[_Watched]:
    chromium = _chromium()
    try:
        from playwright.async_api import async_playwright  # noqa: PLC0415
    except ImportError:
        unavailable("playwright is not installed: pip install -e '.[dev]'")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            w = _Watched(page)
            page.on("request", lambda req: w.requested.append(req.url))
            page.on("pageerror", lambda exc: w.errors.append(str(exc)))
            page.on(
                "console", lambda msg: w.console.append(msg.text) if msg.type == "error" else None
            )
            yield w
        finally:
            await browser.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_the_status_page_in_a_headless_chromium(tmp_path: Path) -> None:
    update = os.environ.get("ALB_UPDATE_SCREENSHOT") == "1"
    shot = README_SCREENSHOT if update else tmp_path / "status-page.png"
    with serve_in_thread(UI_SIM) as fleet:
        settings = settings_for(
            fleet, admin_token=ADMIN_TOKEN, memory="16GiB", heartbeat_interval=0.05
        )
        async with running_bridge(settings) as b, _traffic(b.base_url) as client:
            base = b.base_url
            async with _browser_page() as w:
                page = w.page
                await page.goto(f"{base}/alb/ui")

                # Live data: wait for the elements, never a fixed sleep.
                chatty_seg = page.locator(
                    '.membar[data-daemon="a"] .seg[data-model="chatty:latest"]'
                )
                await chatty_seg.wait_for()
                assert await chatty_seg.get_attribute("data-state") == "serving"
                daemon = (await client.get("/alb/v1/models")).json()["daemons"][0]
                size = {m["model"]: m["size"] for m in daemon["models"]}
                assert await chatty_seg.get_attribute("data-size") == str(size["chatty:latest"])
                width = await chatty_seg.evaluate("e => e.style.width")
                share = 100 * size["chatty:latest"] / (16 * GIB)
                assert float(width.rstrip("%")) == pytest.approx(share, abs=0.01)
                segments = page.locator('.membar[data-daemon="a"] .seg')
                assert await segments.evaluate_all("s => s.map(e => e.dataset.model)") == [
                    "chatty:latest",
                    "other:latest",
                    "vec:latest",
                ]
                memtext = await page.locator('.memtext[data-daemon="a"]').inner_text()
                assert "capacity 16 GiB (config)" in memtext
                budget = page.locator('.membar[data-daemon="a"] .budget-mark')
                share = 100 * daemon["memory"]["budget"] / (16 * GIB)
                left = await budget.evaluate("e => e.style.left")
                assert float(left.rstrip("%")) == pytest.approx(share, abs=0.01)
                assert f"used {daemon['memory']['used'] / GIB:.1f} GiB" in memtext

                chatty = page.locator('tr.runner[data-model="chatty:latest"]')
                assert await chatty.get_attribute("data-state") == "serving"
                assert await chatty.locator("td.in-flight").inner_text() == "2 / 2"
                assert await chatty.locator("td.queued").inner_text() == "2"
                other = page.locator('tr.runner[data-model="other:latest"]')
                assert await other.get_attribute("data-state") == "idle"
                vec = page.locator('tr.runner[data-model="vec:latest"]')
                assert await vec.locator(".flag-pinned").count() == 1

                queued = page.locator('#queues tr[data-model="chatty:latest"]')
                assert await queued.locator("td.in-flight").inner_text() == "2"
                assert await queued.locator("td.queued").inner_text() == "2"

                load = page.locator('tr.decision[data-kind="load"][data-model="chatty:latest"]')
                await load.first.wait_for()
                assert (await load.first.locator("td.reason").inner_text()).strip()
                pin = page.locator('tr.decision[data-kind="pin"][data-model="vec:latest"]')
                assert await pin.count() == 1

                assert await page.locator("#events-mode").inner_text() == "embedded"
                assert "ready" in await page.locator("#events-consumer").inner_text()

                transition = page.locator(
                    '#transitions tr.transition[data-from="chatty:latest"][data-to="other:latest"]'
                )
                await transition.wait_for()
                await page.locator('#live[data-state="live"]').wait_for()

                # Read-only without a credential: no admin control, no daemon URL.
                assert await page.locator("button[data-action]").count() == 0
                assert await page.locator(".actions").count() == 0
                assert await page.get_by_text(fleet.daemons[0].base_url).count() == 0
                await page.screenshot(path=str(shot))

                # With the admin token: the buttons appear, and pin works from the page.
                await page.fill("#credential", ADMIN_TOKEN)
                await page.click("#auth-save")
                pin_other = other.locator('button[data-action="pin"]')
                await pin_other.wait_for()
                await pin_other.click()
                await other.locator(".flag-pinned").wait_for()
                assert await page.evaluate("sessionStorage.getItem('alb.credential')") == (
                    ADMIN_TOKEN
                )
                assert await page.evaluate("localStorage.length") == 0
            rows = (await client.get("/alb/v1/models")).json()["daemons"][0]["models"]
            assert next(m for m in rows if m["model"] == "other:latest")["pinned"] is True

    assert (w.errors, w.console) == ([], [])
    assert w.requested, "the page made no request"
    assert [u for u in w.requested if not u.startswith(base + "/")] == []
    assert {u.removeprefix(base).split("?")[0] for u in w.requested} >= {
        "/alb/ui",
        "/alb/ui/app.js",
        "/alb/ui/style.css",
        "/alb/v1/models",
        "/alb/v1/decisions",
        "/alb/v1/events",
        "/alb/v1/predictor",
        "/alb/v1/models/other%3Alatest/pin",
    }
    assert shot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_with_keys_the_page_asks_for_one_and_shows_what_it_may_read(
    fleet: RunningFleet, tmp_path: Path
) -> None:
    path = tmp_path / "keys.sqlite"
    settings = settings_for(fleet, auth="keys", keys_file=str(path), keys_refresh=0.2)
    store = SqliteKeys(path)
    reader, _ = await keyring.create(store, "ui", parse_scopes("read,inference"))
    async with running_bridge(settings) as b, httpx.AsyncClient(base_url=b.base_url) as c:
        bearer = {"Authorization": f"Bearer {reader}"}
        for _ in range(200):  # the bridge polls the key store
            r = await c.post(
                "/api/generate",
                json={"model": "chatty", "prompt": "hi", "stream": False},
                headers={**bearer, **S1},
            )
            if r.status_code != 401:
                break
            await asyncio.sleep(0.02)
        assert r.status_code == 200, r.text
        async with _browser_page() as w:
            page = w.page
            await page.goto(f"{b.base_url}/alb/ui")
            # No key: the shell loads, the data does not, and the page says why.
            problem = page.locator("#problem")
            await problem.wait_for()
            assert "needs a key with the read scope" in await problem.inner_text()
            assert await page.locator(".daemon").count() == 0
            assert await page.locator('#live[data-state="error"]').count() == 1
            # A read key: the fleet and the pipeline; the decision log needs admin.
            await page.fill("#credential", reader)
            await page.click("#auth-save")
            chatty = page.locator('tr.runner[data-model="chatty:latest"]')
            await chatty.wait_for()
            assert await chatty.get_attribute("data-state") == "idle"
            assert await problem.is_hidden()
            note = page.locator("#decisions-note")
            await page.get_by_text("The decision log needs the admin scope").wait_for()
            assert "admin" in await note.inner_text()
            assert await page.locator("tr.decision").count() == 0
            assert await page.locator("#events-mode").inner_text() == "embedded"
            # Given a credential, the page offers the admin buttons; the bridge decides.
            pin = chatty.locator('button[data-action="pin"]')
            await pin.click()
            await page.locator("#action[data-ok=false]").wait_for()
            assert "does not hold the admin scope" in await page.locator("#action").inner_text()
    assert w.errors == []
    # The browser logs each refused fetch (401 without the key, 403 for the decisions).
    assert w.console
    assert all("401" in line or "403" in line for line in w.console), w.console
    assert [u for u in w.requested if not u.startswith(b.base_url + "/")] == []
