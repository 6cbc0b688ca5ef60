"""API keys on a live bridge in front of ``ollamasim`` (issue #16): credentials, scopes,
model patterns and limits, in each API's shape, and the official clients with keys."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import openai
import orjson
import pytest

from bridge.events.builders import identify
from bridge.events.sink import RequestRecord
from bridge.http.state import Bridge
from bridge.policy.keys import Limits, parse_scopes
from bridge.tenancy import keyring
from bridge.tenancy.store import SqliteKeys
from ollamasim.testing import RunningFleet
from tests.bridge._procs import ALB, clean_env
from tests.bridge._support import running_bridge, settings_for

MSG = [{"role": "user", "content": "hello"}]
ADMIN_TOKEN = "s3cret-admin-token"
REFRESH_S = 0.2


@dataclass
class Keyed:
    url: str
    store: SqliteKeys
    records: list[RequestRecord]
    bridge: Bridge

    async def settled(self) -> None:
        assert self.bridge.tenancy is not None
        await self.bridge.tenancy.quotas.drain()

    async def key(self, scopes: str = "inference,read", **kw: object) -> tuple[str, str]:
        token, record = await keyring.create(self.store, "t", parse_scopes(scopes), **kw)  # type: ignore[arg-type]
        await self.wait_known(token)
        return token, record.id

    async def wait_known(self, token: str) -> None:
        async with httpx.AsyncClient(base_url=self.url) as c:
            for _ in range(200):
                r = await c.get("/api/version", headers={"Authorization": f"Bearer {token}"})
                if r.status_code != 401:
                    return
                await _sleep(0.02)
        raise AssertionError("the bridge never learnt the key")


async def _sleep(s: float) -> None:
    await asyncio.sleep(s)


@pytest.fixture
async def keyed(fleet: RunningFleet, tmp_path: Path) -> AsyncIterator[Keyed]:
    path = tmp_path / "keys.sqlite"
    records: list[RequestRecord] = []
    settings = settings_for(
        fleet,
        auth="keys",
        keys_file=str(path),
        keys_refresh=REFRESH_S,
        admin_token=ADMIN_TOKEN,
    )
    store = SqliteKeys(path)
    async with running_bridge(settings, sink=records.append) as b:
        yield Keyed(b.base_url, store, records, b.app.state.bridge)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_no_key_is_a_401_in_each_apis_shape_and_probes_stay_open(keyed: Keyed) -> None:
    async with httpx.AsyncClient(base_url=keyed.url) as c:
        native = await c.post("/api/generate", json={"model": "chatty", "prompt": "hi"})
        assert native.status_code == 401
        assert isinstance(native.json()["error"], str)
        assert native.headers["www-authenticate"].startswith("Bearer")
        oa = await c.post("/v1/chat/completions", json={"model": "chatty", "messages": MSG})
        assert oa.status_code == 401
        assert oa.json()["error"]["type"] == "api_error"
        wrong = await c.get("/api/tags", headers=_bearer("alb_0123456789ab_" + "x" * 43))
        assert wrong.status_code == 401
        junk = await c.get("/api/tags", headers=_bearer("sk-not-ours"))
        assert junk.status_code == 401
        assert "sk-not-ours" not in junk.text
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await c.get(path)).status_code == 200, path


async def test_scopes_and_model_patterns_are_403_in_each_apis_shape(keyed: Keyed) -> None:
    infer, _ = await keyed.key("inference", models=["chatty*"])
    read, _ = await keyed.key("read")
    admin, _ = await keyed.key("admin,read")
    async with httpx.AsyncClient(base_url=keyed.url, timeout=30) as c:
        ok = await c.post(
            "/api/generate", json={"model": "chatty", "prompt": "hi", "stream": False},
            headers=_bearer(infer),
        )  # fmt: skip
        assert ok.status_code == 200, ok.text
        other = await c.post(
            "/api/generate", json={"model": "other", "prompt": "hi"}, headers=_bearer(infer)
        )
        assert other.status_code == 403
        assert "other" in other.json()["error"]
        other_oa = await c.post(
            "/v1/chat/completions", json={"model": "other", "messages": MSG},
            headers={"X-API-Key": infer},
        )  # fmt: skip
        assert other_oa.status_code == 403
        assert other_oa.json()["error"]["message"]
        assert (await c.get("/api/tags", headers=_bearer(infer))).status_code == 403
        assert (await c.get("/api/tags", headers=_bearer(read))).status_code == 200
        assert (await c.get("/alb/v1/models", headers=_bearer(read))).status_code == 200
        refused = await c.post(
            "/api/generate", json={"model": "chatty", "prompt": "hi"}, headers=_bearer(read)
        )
        assert refused.status_code == 403
        for method, path in [
            ("POST", "/alb/v1/models/chatty/load"),
            ("POST", "/alb/v1/models/chatty/pin"),
            ("POST", "/alb/v1/models/chatty/unpin"),
            ("POST", "/alb/v1/models/chatty/unload"),
            ("GET", "/alb/v1/decisions"),
            ("POST", "/api/pull"),
            ("DELETE", "/api/delete"),
        ]:
            for token in (infer, read):
                r = await c.request(method, path, headers=_bearer(token))
                assert r.status_code == 403, (method, path, r.status_code)
        loaded = await c.post("/alb/v1/models/chatty/load", headers=_bearer(admin))
        assert loaded.status_code == 200, loaded.text
        by_token = await c.get("/alb/v1/decisions", headers=_bearer(ADMIN_TOKEN))
        assert by_token.status_code == 200
        # The admin token is not an inference credential.
        no = await c.post(
            "/api/generate", json={"model": "chatty", "prompt": "hi"}, headers=_bearer(ADMIN_TOKEN)
        )
        assert no.status_code == 403
        # A cross-site page never gets a key accepted (the edge refuses the origin).
        xsite = await c.post(
            "/api/generate",
            json={"model": "chatty", "prompt": "hi"},
            headers={**_bearer(infer), "Origin": "https://evil.example"},
        )
        assert xsite.status_code == 403


async def test_over_a_limit_is_a_429_with_retry_after_and_ratelimit_headers(keyed: Keyed) -> None:
    token, _ = await keyed.key(limits=Limits(rpm=3))
    body = {"model": "chatty", "prompt": "hi", "stream": False}
    async with httpx.AsyncClient(base_url=keyed.url, timeout=30) as c:
        answers = [
            await c.post("/api/generate", json=body, headers=_bearer(token)) for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0"]
        assert answers[0].headers["x-ratelimit-limit-requests"] == "3"
        over = await c.post("/api/generate", json=body, headers=_bearer(token))
        assert over.status_code == 429
        assert 1 <= int(over.headers["retry-after"]) <= 60
        assert over.headers["x-ratelimit-remaining-requests"] == "0"
        assert "requests per minute" in over.json()["error"]
        oa = await c.post(
            "/v1/chat/completions", json={"model": "chatty", "messages": MSG},
            headers=_bearer(token),
        )  # fmt: skip
        assert oa.status_code == 429
        assert oa.json()["error"]["message"]
        assert "retry-after" in oa.headers


async def test_tokens_are_counted_from_the_final_frame(keyed: Keyed) -> None:
    token, ident = await keyed.key(limits=Limits(tpm=100_000))
    async with httpx.AsyncClient(base_url=keyed.url, timeout=30) as c:
        r = await c.post(
            "/api/generate", json={"model": "chatty", "prompt": "hi", "stream": False},
            headers=_bearer(token),
        )  # fmt: skip
        used = r.json()["prompt_eval_count"] + r.json()["eval_count"]
        await keyed.settled()
        after = await c.post(
            "/api/generate", json={"model": "chatty", "prompt": "hi", "stream": False},
            headers=_bearer(token),
        )  # fmt: skip
    # What the second saw left: the limit less the first one's real count and its own
    # reservation (settled after its answer).
    remaining = int(after.headers["x-ratelimit-remaining-tokens"])
    reserve = 1 + 256  # "hi" at 4 characters a token, rounded up, plus the output reserve
    assert remaining == 100_000 - used - reserve
    record = keyed.records[0]
    assert record.key_id == ident
    assert identify(record.headers, record.doc, record.key_id)[2] == ident
    # What `alb keys usage` reads: the rows the bridge writes to its key store.
    assert keyed.bridge.tenancy is not None
    await keyed.settled()
    await keyed.bridge.tenancy.quotas.flush()
    env = clean_env(ALB_KEYS_FILE=str(keyed.store.path))
    done = await asyncio.to_thread(
        subprocess.run,
        [ALB, "keys", "usage", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (row,) = [r for r in orjson.loads(done.stdout) if r["key"] == ident]
    assert row["requests"] == 2
    assert row["prompt_tokens"] + row["output_tokens"] == 2 * used


async def test_the_official_clients_work_with_keys(keyed: Keyed) -> None:
    token, _ = await keyed.key()
    async with ollama.AsyncClient(host=keyed.url, headers=_bearer(token)) as c:
        chat = await c.chat(model="chatty", messages=MSG)
        assert chat.message.content
        parts = [p async for p in await c.chat(model="chatty", messages=MSG, stream=True)]
        assert parts[-1].done
        assert {m.model for m in (await c.list()).models} >= {"chatty:latest"}
    async with ollama.AsyncClient(host=keyed.url) as anonymous:
        with pytest.raises(ollama.ResponseError) as info:
            await anonymous.chat(model="chatty", messages=MSG)
        assert info.value.status_code == 401
    async with openai.AsyncOpenAI(base_url=keyed.url + "/v1", api_key=token, max_retries=0) as oc:
        done = await oc.chat.completions.create(model="chatty", messages=MSG)  # type: ignore[arg-type]
        assert done.choices[0].message.content
        stream = await oc.chat.completions.create(
            model="chatty",
            messages=MSG,
            stream=True,  # type: ignore[arg-type]
        )
        chunks = [ch async for ch in stream]
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    async with openai.AsyncOpenAI(
        base_url=keyed.url + "/v1", api_key="wrong", max_retries=0
    ) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="chatty", messages=MSG)  # type: ignore[arg-type]


async def test_a_revoked_key_is_refused_within_the_refresh_bound(keyed: Keyed) -> None:
    token, ident = await keyed.key()
    async with httpx.AsyncClient(base_url=keyed.url) as c:
        assert (await c.get("/api/tags", headers=_bearer(token))).status_code == 200
        await keyring.revoke(keyed.store, ident)
        t0 = time.monotonic()
        while (await c.get("/api/tags", headers=_bearer(token))).status_code == 200:
            assert time.monotonic() - t0 < REFRESH_S + 1.0, "still accepted past the bound"
            await _sleep(0.01)
        took = time.monotonic() - t0
        r = await c.get("/api/tags", headers=_bearer(token))
        assert r.status_code == 401
        assert "revoked" in r.json()["error"]
    print(f"revocation took effect after {took * 1000:.0f} ms (bound {REFRESH_S:g} s + a poll)")
