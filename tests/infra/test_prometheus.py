"""A real Prometheus (Debian's) scraping a live bridge in front of ``ollamasim`` every
second, with the shipped alert and recording rules. The test drives traffic that makes
the bridge do what the dashboard shows: cold loads, evictions (one runner per daemon),
queueing, 503s at the high-water mark and 429s over a key's limit. Then every recording
rule and every query of the Grafana dashboard (``alb.dashboard``) must return series,
and every metric a query names must be one Prometheus learned from the bridge."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from alb.dashboard import queries
from bridge.policy.keys import Limits, parse_scopes
from bridge.tenancy import keyring
from bridge.tenancy.store import SqliteKeys
from ollamasim.testing import serve_in_thread
from tests.bridge._support import running_bridge, settings_for
from tests.services._env import ServiceUnavailable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

INFRA = Path(__file__).resolve().parents[2] / "infra" / "prometheus"
GIB = 1024**3
FLEET: dict[str, Any] = {
    "time_scale": 0.02,
    "gen_tokens_per_s": 400,
    "prefill_tokens_per_s": 100000,
    "models": [
        {"name": "chatty", "size": GIB, "response_tokens": 20},
        {"name": "other", "size": GIB, "response_tokens": 10},
    ],
    "daemons": [{"name": "a", "memory": 8 * GIB, "load_fixed_s": 2.0, "num_parallel": 2}],
}
_METRIC = re.compile(r"\b(alb_[a-z0-9_]+)")


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} not found: run `scripts/prometheus install` (Debian's prometheus)"
        if os.environ.get("CI") == "true":
            raise ServiceUnavailable(message)
        pytest.skip(message)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def prometheus(target: str) -> Iterator[str]:
    """Prometheus scraping ``target`` (host:port) every second, with the shipped rules
    (their groups evaluated every second too); its base URL."""
    binary = _binary("prometheus")
    work = Path(tempfile.mkdtemp(prefix="alb-prometheus-"))
    rules = []
    for name in ("alerts.yml", "recording.yml"):
        doc = yaml.safe_load((INFRA / name).read_text())
        for group in doc["groups"]:
            group["interval"] = "1s"
        (work / name).write_text(yaml.safe_dump(doc))
        rules.append(str(work / name))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": rules,
        "scrape_configs": [{"job_name": "alb", "static_configs": [{"targets": [target]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    argv = [
        binary,
        f"--config.file={work / 'prometheus.yml'}",
        f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None, (work / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus never became ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


async def _query(c: httpx.AsyncClient, url: str, expr: str) -> list[Any]:
    r = await c.get(url + "/api/v1/query", params={"query": expr})
    body = r.json()
    assert body.get("status") == "success", (expr, body)
    result: list[Any] = body["data"]["result"]
    return result


async def _traffic(base: str, key: str, limited: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:

        async def gen(model: str, headers: dict[str, str], stream: bool = False) -> int:
            body = {"model": model, "prompt": "hi", "stream": stream}
            return (await c.post("/api/generate", json=body, headers=headers)).status_code

        # Cold loads, then a burst that queues and passes the high-water mark (503).
        burst = await asyncio.gather(*(gen("chatty", auth) for _ in range(40)))
        assert 200 in burst
        assert 503 in burst, burst
        # One runner on the daemon: the other model evicts chatty, and back.
        assert await gen("other", auth) == 200
        assert await gen("other", auth, stream=True) == 200
        assert await gen("chatty", auth) == 200
        # A key over its limit (429).
        limited_auth = {"Authorization": f"Bearer {limited}"}
        codes = [await gen("chatty", limited_auth) for _ in range(4)]
        assert 429 in codes, codes


async def test_rules_and_every_dashboard_query_return_series(tmp_path: Path) -> None:
    keys = tmp_path / "keys.sqlite"
    store = SqliteKeys(keys)
    key, _ = await keyring.create(store, "traffic", parse_scopes("inference,read"))
    limited, _ = await keyring.create(
        store, "limited", parse_scopes("inference"), limits=Limits(rpm=2)
    )
    with serve_in_thread(FLEET) as fleet:
        daemons = ",".join(
            f"{d.name}={d.base_url}?parallel=2&memory=8GiB&max_loaded=1" for d in fleet.daemons
        )
        settings = settings_for(
            fleet,
            daemons=daemons,
            auth="keys",
            keys_file=str(keys),
            queue_capacity=8,
            high_water=0.5,
            replication=False,
        )
        async with running_bridge(settings) as b:
            target = b.base_url.removeprefix("http://")
            with prometheus(target) as prom:
                await _traffic(b.base_url, key, limited)
                async with httpx.AsyncClient(timeout=10) as c:
                    await _wait_for_data(c, prom)
                    metadata = (await c.get(prom + "/api/v1/metadata")).json()["data"]
                    known = {_family(m) for m in metadata}
                    missing_data = []
                    for expr in _all_queries():
                        for name in _METRIC.findall(expr):
                            assert _family(name) in known, f"{expr}: {name} is not exported"
                        if not await _query(c, prom, expr):
                            missing_data.append(expr)
                    assert missing_data == [], missing_data
                    rules = (await c.get(prom + "/api/v1/rules")).json()["data"]["groups"]
                    health = [(r["name"], r["health"]) for g in rules for r in g["rules"]]
                    assert all(h == "ok" for _, h in health), health
    print(f"{len(_all_queries())} queries and rules returned series; {len(health)} rules ok")


def _all_queries() -> list[str]:
    """The dashboard's queries (``$__rate_interval`` as Grafana would give it at a 1 s
    scrape: 4 scrapes) and every recording rule's name."""
    exprs = [q.replace("$__rate_interval", "30s") for q in queries()]
    doc = yaml.safe_load((INFRA / "recording.yml").read_text())
    exprs += [r["record"] for g in doc["groups"] for r in g["rules"]]
    return exprs


def _family(name: str) -> str:
    """A metric family's name as the metadata API lists it (counters without ``_total``,
    histograms without their suffixes)."""
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


async def _wait_for_data(c: httpx.AsyncClient, prom: str) -> None:
    """Until the recording rules (evaluated every second) have produced their series."""
    doc = yaml.safe_load((INFRA / "recording.yml").read_text())
    names = [r["record"] for g in doc["groups"] for r in g["rules"]]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all([await _query(c, prom, n) for n in names]):
            return
        await asyncio.sleep(0.5)
