"""The coordination seam: one contract over ``Solo`` and ``Shared`` (a real Redis), then
what only several ``Shared`` replicas do: one owner per daemon, takeover after a crash,
hand-over on close, wants and notices between them, and degraded mode while Redis hangs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from redis.asyncio import Redis

from bridge.coord import Coordinator, Failure, Mode, Solo, Want
from bridge.coord.shared import Shared
from bridge.metrics import Metrics

pytestmark = [pytest.mark.timeout(60)]

DAEMONS = ["gpu0", "gpu1", "gpu2"]
TTL = 0.6  # rounds every 0.2 s


class Recorder:
    """A ``Listener`` that keeps what it was told and wakes the test."""

    def __init__(self) -> None:
        self.owned: dict[str, bool] = {}
        self.wants: list[Want] = []
        self.changes: list[str] = []
        self.failures: list[Failure] = []
        self.replicas: list[int] = []
        self.modes: list[Mode] = []
        self.closings: list[tuple[str, str, str]] = []
        self.changed_models: list[str | None] = []
        self.admins: list[tuple[str, str, str | None]] = []
        #: What ``demand`` reports (the test sets it), and the rounds seen.
        self.wanting: dict[str, dict[str, int]] = {}
        self.rounds = 0
        self.event = asyncio.Event()

    def owner_changed(self, daemon: str, owned: bool) -> None:
        self.owned[daemon] = owned
        self.event.set()

    def replicas_changed(self, replicas: int) -> None:
        self.replicas.append(replicas)
        self.event.set()

    def wanted(self, want: Want) -> None:
        self.wants.append(want)
        self.event.set()

    def changed(self, daemon: str, model: str | None) -> None:
        self.changes.append(daemon)
        self.changed_models.append(model)
        self.event.set()

    def load_failed(self, failure: Failure) -> None:
        self.failures.append(failure)
        self.event.set()

    def mode_changed(self, mode: Mode) -> None:
        self.modes.append(mode)
        self.event.set()

    def closing(self, daemon: str, model: str, token: str) -> None:
        self.closings.append((daemon, model, token))
        self.event.set()

    def admin(self, action: str, model: str, daemon: str | None) -> None:
        self.admins.append((action, model, daemon))
        self.event.set()

    def shares_changed(self) -> None:
        self.rounds += 1
        self.event.set()

    def demand(self) -> dict[str, dict[str, int]]:
        return self.wanting


async def until(check: Callable[[], bool], within: float = 5.0, *recorders: Recorder) -> float:
    """Wait until ``check()`` holds, woken by the recorders (or every 50 ms); returns the
    seconds it took."""
    t0 = time.monotonic()
    while not check():
        remaining = within - (time.monotonic() - t0)
        assert remaining > 0, "condition not reached in time"
        for r in recorders:
            r.event.clear()
        waits = [asyncio.ensure_future(r.event.wait()) for r in recorders]
        try:
            await asyncio.wait(waits or [asyncio.ensure_future(asyncio.sleep(0.05))], timeout=0.05)
        finally:
            for w in waits:
                w.cancel()
    return time.monotonic() - t0


def _shared(url: str, ns: str, name: str, metrics: Metrics | None = None) -> Shared:
    return Shared(
        url, DAEMONS, replica=name, lease_ttl=TTL, timeout=0.1, namespace=ns, metrics=metrics
    )


@pytest.fixture
def namespace() -> str:
    return f"alb-test-{uuid.uuid4().hex[:8]}"


# --- the contract, over both ----------------------------------------------------------------
@pytest.fixture(params=["solo", pytest.param("shared", marks=pytest.mark.redis)])
async def lone(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Coordinator]:
    coord: Coordinator
    if request.param == "solo":
        coord = Solo("r1")
    else:
        coord = _shared(request.getfixturevalue("redis_url"), namespace, "r1")
    await coord.start(Recorder())
    try:
        yield coord
    finally:
        await coord.aclose()


async def test_a_lone_replica_owns_every_daemon_once_started(lone: Coordinator) -> None:
    assert lone.mode in {Mode.SOLO, Mode.SHARED}
    assert lone.replicas == 1
    for d in DAEMONS:
        assert lone.owns(d)
        assert lone.owner(d) == "r1"


async def test_a_lone_replicas_claim_is_its_own_choice(lone: Coordinator) -> None:
    assert await lone.claim("m:latest", "gpu1") == "gpu1"
    # Telling nobody costs nothing and raises nothing.
    lone.want(Want("gpu0", "m:latest", 2048))
    lone.changed("gpu0")
    lone.failed(Failure("gpu0", "m:latest", 503, "no"))


# --- several Shared replicas ------------------------------------------------------------------
@pytest.fixture
async def trio(
    redis_url: str, namespace: str
) -> AsyncIterator[tuple[list[Shared], list[Recorder]]]:
    coords = [_shared(redis_url, namespace, f"r{i}") for i in range(3)]
    recs = [Recorder() for _ in coords]
    async with AsyncExitStack() as stack:
        for c, r in zip(coords, recs, strict=True):
            await c.start(r)
            stack.push_async_callback(c.aclose)
        yield coords, recs


def _owners(coords: list[Shared]) -> dict[str, list[str]]:
    return {d: [c.replica for c in coords if c.owns(d)] for d in DAEMONS}


def _one_each(coords: list[Shared]) -> Callable[[], bool]:
    return lambda: (
        all(len(o) == 1 for o in _owners(coords).values())
        and all(sum(c.owns(d) for d in DAEMONS) == 1 for c in coords)
    )


@pytest.mark.redis
async def test_three_replicas_share_three_daemons_one_owner_each(
    trio: tuple[list[Shared], list[Recorder]],
) -> None:
    coords, recs = trio
    await until(_one_each(coords), 5.0, *recs)
    assert all(c.replicas == 3 for c in coords)
    # Every replica names the same owner for every daemon (as of its last round).
    owners = {d: _owners(coords)[d][0] for d in DAEMONS}
    await until(lambda: all({c.owner(d) for c in coords} == {owners[d]} for d in DAEMONS), 2.0)
    for d, owner in owners.items():
        assert next(c for c in coords if c.replica == owner).epoch(d) >= 1


@pytest.mark.redis
async def test_a_crashed_owners_daemons_are_taken_over_after_the_lease_with_a_new_epoch(
    trio: tuple[list[Shared], list[Recorder]],
) -> None:
    coords, recs = trio
    await until(_one_each(coords), 5.0, *recs)
    dead = coords[0]
    (daemon,) = [d for d in DAEMONS if dead.owns(d)]
    old_epoch = dead.epoch(daemon)
    await _crash(dead)
    t0 = time.monotonic()
    alive = coords[1:]
    await until(lambda: any(c.owns(daemon) for c in alive), TTL * 3 + 2, *recs[1:])
    took = time.monotonic() - t0
    assert took <= TTL + TTL / 3 + 0.5  # expiry plus one round
    (new_owner,) = [c for c in alive if c.owns(daemon)]
    assert new_owner.epoch(daemon) > old_epoch
    await until(lambda: all(c.replicas == 2 for c in alive), TTL * 3 + 2, *recs[1:])


@pytest.mark.redis
async def test_a_closing_owner_hands_its_daemons_over_at_once(
    trio: tuple[list[Shared], list[Recorder]],
) -> None:
    coords, recs = trio
    await until(_one_each(coords), 5.0, *recs)
    leaving = coords[2]
    (daemon,) = [d for d in DAEMONS if leaving.owns(d)]
    await leaving.aclose()
    took = await until(lambda: any(c.owns(daemon) for c in coords[:2]), 2.0, *recs[:2])
    assert took < TTL  # the released notice, not the expiry


@pytest.mark.redis
async def test_wants_reach_the_owner_and_notices_reach_the_others(
    trio: tuple[list[Shared], list[Recorder]],
) -> None:
    coords, recs = trio
    await until(_one_each(coords), 5.0, *recs)
    owner_i = next(i for i, c in enumerate(coords) if c.owns("gpu1"))
    asker_i = (owner_i + 1) % 3
    coords[asker_i].want(Want("gpu1", "m:latest", 8192, client_num_ctx=8192, replica=True))
    await until(lambda: bool(recs[owner_i].wants), 2.0, recs[owner_i])
    (got,) = recs[owner_i].wants
    assert (got.daemon, got.model, got.tokens, got.client_num_ctx, got.replica) == (
        "gpu1",
        "m:latest",
        8192,
        8192,
        True,
    )
    assert got.sender == coords[asker_i].replica
    assert not any(recs[i].wants for i in range(3) if i != owner_i)  # only the owner acts
    coords[owner_i].changed("gpu1", "m:latest")
    coords[owner_i].failed(Failure("gpu1", "m:latest", 400, "too big", None))
    others = [r for i, r in enumerate(recs) if i != owner_i]
    await until(lambda: all(r.changes and r.failures for r in others), 2.0, *others)
    assert recs[owner_i].changes == []  # not told of its own change
    assert others[0].failures[0] == Failure("gpu1", "m:latest", 400, "too big", None)
    assert others[0].changed_models == ["m:latest"]


@pytest.mark.redis
async def test_slots_beyond_one_each_go_to_the_replica_with_the_demand(
    trio: tuple[list[Shared], list[Recorder]],
) -> None:
    coords, recs = trio
    await until(_one_each(coords), 5.0, *recs)
    assert [c.share("gpu0", "m:latest", 6) for c in coords] == [2, 2, 2]  # no demand: even
    recs[1].wanting = {"gpu0": {"m:latest": 12}}
    start = [r.rounds for r in recs]
    # Two rounds each: the demand written, then read by all.
    await until(
        lambda: all(r.rounds >= s + 2 for r, s in zip(recs, start, strict=True)), 3.0, *recs
    )
    assert [c.share("gpu0", "m:latest", 6) for c in coords] == [1, 4, 1]
    assert [c.share("gpu0", "other:latest", 6) for c in coords] == [2, 2, 2]
    assert [c.share("gpu0", "m:latest", 2) for c in coords] == [1, 1, 1]  # max(slots, 3)
    # What a Retry-After adds for the others' queues: theirs, never one's own.
    assert [c.others("gpu0", "m:latest") for c in coords] == [12, 0, 12]
    assert [c.others("gpu1", "m:latest") for c in coords] == [0, 0, 0]


@pytest.mark.redis
async def test_the_first_claim_of_a_cold_model_wins_for_every_replica(
    trio: tuple[list[Shared], list[Recorder]],
) -> None:
    coords, _ = trio
    got = await asyncio.gather(
        *(c.claim("cold:latest", d) for c, d in zip(coords, DAEMONS, strict=True))
    )
    assert len(set(got)) == 1
    assert got[0] in DAEMONS


@pytest.mark.redis
async def test_a_hung_redis_degrades_every_replica_and_shared_mode_comes_back(
    redis_url: str, trio: tuple[list[Shared], list[Recorder]]
) -> None:
    coords, recs = trio
    await until(_one_each(coords), 5.0, *recs)
    admin = Redis.from_url(redis_url)
    try:
        # CLIENT PAUSE: every command hangs, as a Redis that stopped answering does.
        await admin.client_pause(3000, all=True)
        t0 = time.monotonic()
        await until(lambda: all(c.mode is Mode.DEGRADED for c in coords), 3.0, *recs)
        assert time.monotonic() - t0 < 1.0  # a round and its 100 ms timeouts
        assert all(c.owns(d) for c in coords for d in DAEMONS)  # each serves on its own
        assert all(c.replicas == 3 for c in coords)  # the membership it last saw
        t1 = time.monotonic()
        assert await coords[0].claim("x:latest", "gpu2") == "gpu2"  # no wait on Redis
        assert time.monotonic() - t1 < 0.05
        await admin.client_unpause()
        await until(_one_each(coords), 5.0, *recs)
        assert all(c.mode is Mode.SHARED for c in coords)
        assert all(r.modes == [Mode.DEGRADED, Mode.SHARED] for r in recs)
    finally:
        await admin.client_unpause()
        await admin.aclose()


@pytest.mark.redis
async def test_the_metrics_show_the_mode_the_replicas_and_the_daemons_owned(
    redis_url: str, namespace: str
) -> None:
    metrics = Metrics()
    coord = _shared(redis_url, namespace, "solo-ish", metrics)
    await coord.start(Recorder())
    try:
        text = metrics.render().decode()
        assert 'alb_coordination_mode{mode="shared"} 1.0' in text
        assert "alb_coordination_replicas 1.0" in text
        assert all(f'alb_daemon_owned{{daemon="{d}"}} 1.0' in text for d in DAEMONS)
        assert 'alb_leases_total{action="taken"} 3.0' in text
    finally:
        await coord.aclose()
    text = metrics.render().decode()
    assert 'alb_leases_total{action="released"} 3.0' in text


async def _crash(coord: Shared) -> None:
    """Stop a replica as SIGKILL would: no hand-back, its leases left to expire."""
    tasks: list[Awaitable[object]] = []
    for t in (coord._loop_task, coord._sub_task, *coord._tasks):
        if t is not None:
            t.cancel()
            tasks.append(t)
    await asyncio.gather(*tasks, return_exceptions=True)
    coord._held.clear()
    coord._mode = Mode.DEGRADED
