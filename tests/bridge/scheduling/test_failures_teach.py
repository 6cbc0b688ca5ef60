"""Issue #12, findings 7 and 8: status codes as promised, and failed loads teach placement.

* A request that can never fit (over every daemon's whole budget) is a 400 naming the
  sizes, through the admin API too; one that cannot fit *now* stays a 503.
* A load that times out marks its (daemon, model) failing, counts against the daemon's
  breaker, and the requests queued for it are served by another daemon.
* A daemon of unknown memory learns its limit from the load it refused; the bridge
  never unloads a working runner for a load it has no evidence will fit.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from bridge.policy.health import LoadBook, is_memory_error, memory_figures
from bridge.policy.numctx import Need
from bridge.policy.placement import (
    NEVER,
    Cooldown,
    DaemonView,
    Load,
    RecencyOracle,
    Reject,
    RoomPlan,
    RunnerView,
    eviction_value,
    plan_room,
    route,
)
from bridge.settings import load_settings
from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._support import running_bridge

GIB = 1024**3
ORACLE = RecencyOracle()


def _value(r: RunnerView) -> float:
    return eviction_value(ORACLE, "x", r)


def _view(
    name: str, budget: int | None, runners: tuple[RunnerView, ...] = (), **kw: Any
) -> DaemonView:
    return DaemonView(
        name=name,
        up=kw.pop("up", True),
        models=frozenset({"m", "o"}),
        runners={r.key: r for r in runners},
        budget=budget,
        max_loaded=kw.pop("max_loaded", 3),
        **kw,
    )


def _idle(key: str, size: int, **kw: Any) -> RunnerView:
    return RunnerView(key, size, 4096, True, kw.pop("busy", False), False, 100.0, 5.0, **kw)


# --- pure policies ------------------------------------------------------------------------
def test_never_fit_is_each_daemons_size_against_its_own_budget() -> None:
    # parallel 2 on the big daemon, 1 on the small one: its size there is smaller, yet
    # over its own budget. The smallest size is under the largest budget: still never.
    views = [_view("gpu0", 21 * GIB), _view("gpu1", 10 * GIB)]
    sizes = {"gpu0": 30 * GIB, "gpu1": 16 * GIB}
    got = route(views, "m", Need(131072), lambda v: sizes[v.name], ORACLE)
    assert isinstance(got, Reject)
    assert got.status == 400
    assert got.reason.startswith("m needs about 16.0 GiB of memory on gpu1 (budget 10.0 GiB)")
    assert "30.0 GiB on gpu0 (budget 21.0 GiB)" in got.reason
    assert got.retry_after is None
    # Cannot fit now (a pin holds the room) is not never: 503.
    pinned = RunnerView("o", 15 * GIB, 4096, True, False, True, 1.0, 5.0)
    now = route([_view("gpu0", 21 * GIB, (pinned,))], "m", Need(1), lambda v: 10 * GIB, ORACLE)
    assert isinstance(now, Reject)
    assert now.status == 503


def test_a_daemon_that_is_out_of_reach_still_counts_for_never() -> None:
    # The big daemon is down (or excluded after a failure): the request is not a 400.
    views = [_view("gpu0", 40 * GIB, up=False), _view("gpu1", 10 * GIB)]
    got = route(views, "m", Need(1), lambda v: 20 * GIB, ORACLE)
    assert isinstance(got, Reject)
    assert got.status == 503


def test_placement_avoids_a_failing_pair_while_another_daemon_can_serve() -> None:
    cool = {"m": Cooldown(20.0, "loading m on gpu0 took longer than 600s")}
    # gpu0 would win on every count (free memory, nothing outstanding, its name)...
    gpu0 = _view("gpu0", 20 * GIB, failing=cool)
    gpu1 = _view("gpu1", 20 * GIB, (_idle("o", 15 * GIB),), outstanding=3)
    got = route([gpu0, gpu1], "m", Need(1), lambda v: 4 * GIB, ORACLE)
    assert isinstance(got, Load)
    assert got.daemon == "gpu1"  # ...but its loads of m failed: gpu1, evicting o
    # Alone, it answers 503 with the cooldown as Retry-After, and the error.
    alone = route([gpu0], "m", Need(1), lambda v: 4 * GIB, ORACLE)
    assert isinstance(alone, Reject)
    assert (alone.status, alone.retry_after) == (503, 20.0)
    assert "took longer than 600s" in alone.reason
    # Other models still load there.
    assert isinstance(route([gpu0], "o", Need(1), lambda v: GIB, ORACLE), Load)


def test_a_learned_ceiling_is_never_and_evictions_need_evidence() -> None:
    # Memory unknown (budget None): the daemon was seen holding 6 GiB at once.
    a, b = _idle("a", 3 * GIB), _idle("b", 3 * GIB)
    view = _view("x", None, (a, b), max_loaded=2, held=6 * GIB, ceiling=12 * GIB)
    assert plan_room(view, "m", 12 * GIB, _value) is NEVER
    small = plan_room(view, "m", 3 * GIB, _value)  # fits once one goes: known
    assert isinstance(small, RoomPlan)
    assert len(small.victims) == 1
    assert small.proven
    # It never held that much: no eviction on a guess (it waits for room)...
    assert plan_room(view, "m", 8 * GIB, _value) is None
    # ...and with a free runner slot the load goes ahead, unproven, evicting nothing.
    roomy = _view("x", None, (a, b), max_loaded=3, held=6 * GIB)
    assert plan_room(roomy, "m", 8 * GIB, _value) == RoomPlan(proven=False)
    own = _view("x", None, (_idle("m", 3 * GIB), a), held=6 * GIB)
    reload_big = plan_room(own, "m", 8 * GIB, _value)
    assert isinstance(reload_big, RoomPlan)
    assert reload_big.reload
    assert not reload_big.proven  # the driver keeps the runner: no unload first
    only = route([view], "m", Need(1), lambda v: 12 * GIB, ORACLE)
    assert isinstance(only, Reject)
    assert only.status == 400
    assert "a 12.0 GiB load failed there for want of memory" in only.reason


def test_the_load_book_learns_ceilings_and_cooldowns() -> None:
    book = LoadBook(cooldown=10, cooldown_max=25)
    oom = (
        "loading m on d failed: model requires more system memory (12.3 GiB) "
        "than is available (8.0 GiB)"
    )
    assert is_memory_error(oom)
    assert memory_figures(oom) == (int(12.3 * GIB), 8 * GIB)
    lesson = book.failed("d", "m", 20 * GIB, oom, now=0)
    assert lesson.memory
    assert lesson.failing is None  # a size a client chose is not the daemon's fault
    assert book.ceiling == {"d": 20 * GIB}
    book.failed("d", "m", 14 * GIB, oom, now=1)
    assert book.ceiling == {"d": 14 * GIB}  # the smallest that failed
    assert not book.failed("d", "m", 4 * GIB, "timed out", now=2).memory
    first = book.failing_for("d", "m", 3)
    assert first is not None
    assert first.until == 12
    book.failed("d", "m", 4 * GIB, "timed out", now=12)
    second = book.failing_for("d", "m", 13)
    assert second is not None
    assert (second.count, second.until) == (2, 32)  # doubled
    book.failed("d", "m", 4 * GIB, "timed out", now=32)
    third = book.failing_for("d", "m", 33)
    assert third is not None
    assert third.until == 57  # capped at cooldown_max
    assert book.failing_for("d", "m", 57) is None
    book.loaded("d", "m", 15 * GIB)
    assert book.failing_for("d", "m", 40) is None
    assert book.ceiling == {}  # a load that big worked after all


# --- finding 7: a request that can never fit is a 400 --------------------------------------
NEVER_FIT: dict[str, Any] = {
    "time_scale": 0.01,
    "models": [
        {
            "name": "long",
            "size": 2 * GIB,
            "context_length": 131072,
            "kv_bytes_per_token": 114688,
            "response_tokens": 4,
        }
    ],
    "daemons": [
        {"name": "gpu0", "memory": 24 * GIB, "num_parallel": 2},
        {"name": "gpu1", "memory": 12 * GIB, "num_parallel": 1},
    ],
}


async def test_a_request_that_can_never_fit_is_a_400_naming_the_sizes() -> None:
    with serve_in_thread(NEVER_FIT) as fleet:
        daemons = "gpu0={}?parallel=2&memory=24GiB,gpu1={}?parallel=1&memory=12GiB".format(
            fleet.daemon("gpu0").base_url, fleet.daemon("gpu1").base_url
        )
        async with (
            running_bridge(load_settings({"ALB_DAEMONS": daemons})) as b,
            httpx.AsyncClient(base_url=b.base_url, timeout=20) as c,
        ):
            body = {"model": "long", "prompt": "hi", "options": {"num_ctx": 131072}}
            r = await c.post("/api/generate", json=body)
            assert r.status_code == 400, r.text
            assert "retry-after" not in r.headers
            msg = r.json()["error"]
            assert "long:latest needs about" in msg
            assert "on gpu1 (budget 10.8 GiB)" in msg
            assert "on gpu0 (budget 21.6 GiB)" in msg
            admin = await c.post("/alb/v1/models/long/load?num_ctx=131072")
            assert admin.status_code == 400, admin.text
            assert "on gpu1 (budget 10.8 GiB)" in admin.json()["error"]
            absurd = await c.post("/alb/v1/models/long/load?num_ctx=1000000000000")
            assert absurd.status_code == 400, absurd.text
            assert "at most 262144" in absurd.json()["error"]
            for bad in ({"num_ctx": True}, {"num_ctx": "1e12"}, {"num_ctx": 2**40}):
                r = await c.post("/alb/v1/models/long/load", json=bad)
                assert r.status_code == 400, (bad, r.text)
            ok = await c.post("/api/generate", json={**body, "stream": False, "options": {}})
            assert ok.status_code == 200
        assert not [e for d in fleet.daemons for e in d.events() if e.kind == "load-failed"]


# --- finding 8: a hanging load teaches placement ------------------------------------------
HANG: dict[str, Any] = {
    "time_scale": 0.01,
    "gen_tokens_per_s": 2000,
    "models": [{"name": "m", "size": GIB, "response_tokens": 4}],
    "daemons": [{"name": f"gpu{i}", "memory": 16 * GIB, "num_parallel": 2} for i in range(2)],
}


def _hang_settings(fleet: RunningFleet, **env: str) -> Any:
    daemons = ",".join(f"{d.name}={d.base_url}?parallel=2&memory=16GiB" for d in fleet.daemons)
    return load_settings({"ALB_DAEMONS": daemons, "ALB_LOAD_TIMEOUT": "0.5", **env})


async def test_a_hanging_load_hands_its_requests_to_another_daemon_and_opens_the_circuit() -> None:
    with serve_in_thread(HANG) as fleet:
        gpu0 = fleet.daemon("gpu0")
        gpu0.faults.hang_load("m")
        settings = _hang_settings(fleet, ALB_BREAKER_FAILURES="1", ALB_BREAKER_COOLDOWN="60")
        async with (
            running_bridge(settings) as b,
            httpx.AsyncClient(base_url=b.base_url, timeout=20) as c,
        ):
            body = {"model": "m", "prompt": "hi", "stream": False}
            t0 = time.monotonic()
            replies = await asyncio.gather(*(c.post("/api/generate", json=body) for _ in range(4)))
            elapsed = time.monotonic() - t0
            assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
            assert {r.headers["x-alb-daemon"] for r in replies} == {"gpu1"}
            state = {d["name"]: d for d in (await c.get("/alb/v1/models")).json()["daemons"]}
            assert state["gpu0"]["circuit"] == "open"
            failing = (await c.get("/alb/v1/decisions?kind=load")).json()["decisions"]
            assert [d for d in failing if d["reason"] == "failing" and d["daemon"] == "gpu0"]
        assert elapsed < 5  # one load timeout (0.5 s), then gpu1's load
        starts = [e for e in gpu0.events() if e.kind == "load-start"]
        assert len(starts) == 1


async def test_a_failing_pair_gets_no_new_load_while_another_daemon_has_the_model() -> None:
    with serve_in_thread(HANG) as fleet:
        gpu0 = fleet.daemon("gpu0")
        gpu0.faults.hang_load("m")
        async with (
            running_bridge(_hang_settings(fleet)) as b,
            httpx.AsyncClient(base_url=b.base_url, timeout=20) as c,
        ):
            body = {"model": "m", "prompt": "hi", "stream": False}
            first = await c.post("/api/generate", json=body)
            assert first.status_code == 200, first.text
            assert first.headers["x-alb-daemon"] == "gpu1"
            state = {d["name"]: d for d in (await c.get("/alb/v1/models")).json()["daemons"]}
            assert state["gpu0"]["circuit"] == "closed"  # one failure of three
            [row] = [r for r in state["gpu0"]["models"] if r["model"] == "m:latest"]
            assert row["load_failing"]["failures"] == 1
            assert 0 < row["load_failing"]["retry_in_s"] <= 30
            # Cold again: placement would pick gpu0 (same cost, first by name) but for
            # its failed load.
            r = await c.post("/alb/v1/models/m/unload", json={"daemon": "gpu1"})
            assert r.status_code == 200, r.text
            again = await c.post("/api/generate", json=body)
            assert again.status_code == 200, again.text
            assert again.headers["x-alb-daemon"] == "gpu1"
        assert len([e for e in gpu0.events() if e.kind == "load-start"]) == 1


async def test_alone_a_failing_pair_answers_503_with_the_cooldown() -> None:
    config = {**HANG, "daemons": HANG["daemons"][:1]}
    with serve_in_thread(config) as fleet:
        fleet.daemon("gpu0").faults.hang_load("m")
        settings = _hang_settings(fleet, ALB_LOAD_FAILURE_COOLDOWN="30")
        async with (
            running_bridge(settings) as b,
            httpx.AsyncClient(base_url=b.base_url, timeout=20) as c,
        ):
            body = {"model": "m", "prompt": "hi", "stream": False}
            first = await c.post("/api/generate", json=body)
            assert first.status_code == 504  # the load's own error, nothing else to try
            t0 = time.monotonic()
            second = await c.post("/api/generate", json=body)
            assert time.monotonic() - t0 < 0.4  # no second wait for a load timeout
            assert second.status_code == 503
            assert 25 <= int(second.headers["retry-after"]) <= 30
            assert "failed" in second.json()["error"]
        starts = [e for e in fleet.daemon("gpu0").events() if e.kind == "load-start"]
        assert len(starts) == 1


# --- finding 8: memory unknown, the limit is learned --------------------------------------
UNKNOWN: dict[str, Any] = {
    "time_scale": 0.01,
    "gen_tokens_per_s": 2000,
    "prefill_tokens_per_s": 100_000,
    "models": [
        # 2 GiB + 64 KiB per token and sequence: 2.5 GiB at the default 4096 x 2 slots,
        # 18 GiB at its full 131072.
        {
            "name": "long",
            "size": 2 * GIB,
            "context_length": 131072,
            "kv_bytes_per_token": 65536,
            "response_tokens": 4,
        },
        {"name": "other", "size": 3 * GIB, "kv_bytes_per_token": 1024, "response_tokens": 4},
        # Two layers: the bridge's KV estimate from /api/show is small too.
        {
            "name": "third",
            "size": 2 * GIB,
            "kv_bytes_per_token": 1024,
            "block_count": 2,
            "response_tokens": 4,
        },
    ],
    "daemons": [{"name": "a", "memory": 8 * GIB, "num_parallel": 2, "load_fixed_s": 2.0}],
}


class _Tally:
    """Statuses the bystanders got; ``reach(n)`` waits until there are ``n``."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self._grew = asyncio.Condition()

    async def add(self, status: int) -> None:
        async with self._grew:
            self.statuses.append(status)
            self._grew.notify_all()

    async def reach(self, n: int) -> None:
        async with self._grew:
            await self._grew.wait_for(lambda: len(self.statuses) >= n)


async def _bystander(c: httpx.AsyncClient, stop: asyncio.Event, tally: _Tally) -> None:
    while not stop.is_set():
        r = await c.post("/api/generate", json={"model": "long", "prompt": "hi", "stream": False})
        await tally.add(r.status_code)


async def test_a_daemon_of_unknown_memory_learns_its_limit_and_keeps_its_runners() -> None:
    with serve_in_thread(UNKNOWN) as fleet:
        d = fleet.daemon("a")
        # No ?memory=: the bridge does not know this daemon's memory (the default mode).
        settings = load_settings({"ALB_DAEMONS": f"a={d.base_url}?parallel=2&max_loaded=2"})
        async with (
            running_bridge(settings) as b,
            httpx.AsyncClient(base_url=b.base_url, timeout=20) as c,
        ):
            for model in ("long", "other"):
                r = await c.post(
                    "/api/generate", json={"model": model, "prompt": "x", "stream": False}
                )
                assert r.status_code == 200, r.text
            tally = _Tally()
            stop = asyncio.Event()
            workers = [asyncio.create_task(_bystander(c, stop, tally)) for _ in range(3)]
            await tally.reach(10)
            attack = {"model": "long", "prompt": "hi", "options": {"num_ctx": 131072}}
            first = await c.post("/api/generate", json=attack)
            await tally.reach(len(tally.statuses) + 10)  # they are still served
            second = await c.post("/api/generate", json=attack)
            stop.set()
            await asyncio.gather(*workers)
            # A load the daemon is known to hold still evicts as before.
            third = await c.post(
                "/api/generate", json={"model": "third", "prompt": "x", "stream": False}
            )
            decisions = (await c.get("/alb/v1/decisions?limit=1000")).json()["decisions"]
        assert first.status_code == 400, first.text
        assert "for want of memory" in first.json()["error"]
        assert second.status_code == 400, second.text
        assert set(tally.statuses) == {200}, tally.statuses
        assert third.status_code == 200, third.text
        events = d.events()
        failed = [e for e in events if e.kind == "load-failed"]
        assert len(failed) == 1  # the attack once: then the limit was known
        unloads = [(e.model, e.reason) for e in events if e.kind == "unload"]
        # Nothing was unloaded for a load that could not be done; "other" only for "third".
        assert unloads == [("other:latest", "requested")], unloads
        learned = [x for x in decisions if x["reason"] == "memory-ceiling-learned"]
        assert learned
        assert learned[-1]["inputs"]["daemon_available"] == 8 * GIB
