"""Issue #16's "done when", limits across replicas: three ``alb serve`` processes with
``ALB_AUTH=keys`` in front of one simulated fleet, sharing one real Redis (append-only,
so a restart keeps the windows), keys made with ``alb keys create``."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from ollamasim.testing import serve_in_thread
from tests.bridge._procs import ALB, Proc, StoppableRedis, clean_env, free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]

GIB = 1024**3
REFRESH_S = 0.5
FLEET: dict[str, Any] = {
    "time_scale": 0.01,
    "gen_tokens_per_s": 2000,
    "prefill_tokens_per_s": 100000,
    "models": [{"name": "chatty", "size": GIB, "response_tokens": 6}],
    "daemons": [{"name": "a", "memory": 16 * GIB, "load_fixed_s": 1.0, "num_parallel": 8}],
}
BODY = {"model": "chatty", "prompt": "hi", "stream": False, "options": {"num_predict": 6}}


@dataclass
class Cluster:
    urls: list[str]
    env: dict[str, str]
    redis: StoppableRedis

    def create(self, *args: str) -> tuple[str, str]:
        done = subprocess.run(
            [ALB, "keys", "create", "--name", "t", "--json", *args],
            env=self.env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        doc = orjson.loads(done.stdout)
        return str(doc["key"]), str(doc["id"])


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    redis = StoppableRedis(persist=True)
    redis.start()
    namespace = f"alb-keys-{uuid.uuid4().hex[:8]}"
    with serve_in_thread(FLEET) as fleet, ExitStack() as stack:
        stack.callback(redis.remove)
        daemons = ",".join(f"{d.name}={d.base_url}?parallel=8" for d in fleet.daemons)
        base = clean_env(ALB_REDIS_URL=redis.url, ALB_COORD_NAMESPACE=namespace)
        procs, urls = [], []
        for i in range(3):
            port = free_port()
            env = {
                **base,
                "ALB_DAEMONS": daemons,
                "ALB_AUTH": "keys",
                "ALB_KEYS_REFRESH": str(REFRESH_S),
                "ALB_REPLICA_ID": f"r{i}",
                "ALB_LEASE_TTL": "1.5",
                "ALB_EVENTS": "false",
                "ALB_QUEUE_CAPACITY": "1024",
            }
            proc = Proc([ALB, "serve", "--host", "127.0.0.1", "--port", str(port)], env)
            stack.callback(proc.stop)
            procs.append(proc)
            urls.append(f"http://127.0.0.1:{port}")
        for proc in procs:
            proc.wait_line("bridge listening on", timeout=30)
        yield Cluster(urls, base, redis)


async def _known_everywhere(c: httpx.AsyncClient, urls: list[str], token: str) -> None:
    for u in urls:
        for _ in range(200):
            r = await c.get(u + "/api/version", headers={"Authorization": f"Bearer {token}"})
            if r.status_code != 401:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{u} never learnt the key")


async def _burst(
    c: httpx.AsyncClient, urls: list[str], token: str, n: int, width: int = 30
) -> list[httpx.Response]:
    sem = asyncio.Semaphore(width)

    async def one(i: int) -> httpx.Response:
        async with sem:
            return await c.post(
                urls[i % len(urls)] + "/api/generate",
                json=BODY,
                headers={"Authorization": f"Bearer {token}"},
            )

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def _statuses(answers: list[httpx.Response]) -> Counter[int]:
    return Counter(a.status_code for a in answers)


async def test_one_key_limits_hold_across_three_replicas(cluster: Cluster) -> None:
    urls = cluster.urls
    rpm_key, _ = cluster.create("--rpm", "60")
    tpm_key, _ = cluster.create("--tpm", "2000")
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as c:
        await _known_everywhere(c, urls, rpm_key)
        await _known_everywhere(c, urls, tpm_key)

        # 600 requests for a 60-a-minute key, round-robin over the replicas, well within
        # one minute: 60 answered, the rest 429 with Retry-After.
        t0 = time.monotonic()
        answers = await _burst(c, urls, rpm_key, 600)
        took = time.monotonic() - t0
        statuses = _statuses(answers)
        assert took < 50, took
        assert set(statuses) == {200, 429}, statuses
        assert abs(statuses[200] - 60) <= 1, statuses
        for a in answers:
            if a.status_code == 429:
                assert 1 <= int(a.headers["retry-after"]) <= 60
                assert a.headers["x-ratelimit-limit-requests"] == "60"
        print(f"rpm 60, 600 requests over 3 replicas in {took:.1f} s: {dict(statuses)}")

        # Tokens: each request is 1 prompt token + 6 output (num_predict 6 = what it
        # reserves: no reservation error), so 2000 a minute admit 285 requests.
        answers = await _burst(c, urls, tpm_key, 600)
        statuses = _statuses(answers)
        used = sum(
            a.json()["prompt_eval_count"] + a.json()["eval_count"]
            for a in answers
            if a.status_code == 200
        )
        assert set(statuses) == {200, 429}, statuses
        assert 2000 - 7 * 3 <= used <= 2000, (used, statuses)
        print(f"tpm 2000: {dict(statuses)}, {used} tokens used")


async def test_the_limit_holds_again_after_redis_restarts_mid_minute(cluster: Cluster) -> None:
    urls = cluster.urls
    token, _ = cluster.create("--rpm", "60")
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as c:
        await _known_everywhere(c, urls, token)
        first = _statuses(await _burst(c, urls, token, 30))
        assert first == Counter({200: 30})
        cluster.redis.stop()
        # Alone, each replica takes its share (20) less what it took already (10).
        during = _statuses(await _burst(c, urls, token, 120))
        assert set(during) <= {200, 429}, during
        cluster.redis.start()
        # Back to shared mode: each replica hands in what it admitted alone.
        for _ in range(200):
            views = [(await c.get(u + "/metrics")).text for u in urls]
            if all('alb_key_limits_mode{mode="shared"} 1.0' in v for v in views):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the replicas never went back to shared mode")
        after = _statuses(await _burst(c, urls, token, 120))
        total = first[200] + during[200] + after[200]
        print(f"before {dict(first)}, Redis down {dict(during)}, back {dict(after)}: {total}")
        assert during[200] <= 30 + 3, during
        assert abs(total - 60) <= 1, (first, during, after)


async def test_a_revoked_key_is_refused_on_every_replica_within_the_bound(
    cluster: Cluster,
) -> None:
    urls = cluster.urls
    token, ident = cluster.create()
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30) as c:
        await _known_everywhere(c, urls, token)
        await asyncio.to_thread(
            subprocess.run,
            [ALB, "keys", "revoke", ident],
            env=cluster.env,
            check=True,
            timeout=60,
            capture_output=True,
        )
        t0 = time.monotonic()
        pending = set(urls)
        while pending:
            for u in list(pending):
                if (await c.get(u + "/api/tags", headers=headers)).status_code == 401:
                    pending.discard(u)
            assert time.monotonic() - t0 < REFRESH_S + 1.0, f"still accepted on {pending}"
            await asyncio.sleep(0.01)
        took = time.monotonic() - t0
    print(f"revoked on all 3 replicas after {took * 1000:.0f} ms (ALB_KEYS_REFRESH {REFRESH_S} s)")
