"""``Shared``: replicas that share the fleet through Redis (see ``bridge.coord``).

What Redis holds, under ``{ns}:`` (``ALB_COORD_NAMESPACE``):

* ``lease:{daemon}`` = ``"{replica}|{epoch}"``, with a TTL (``ALB_LEASE_TTL``): the
  daemon's owner. Taken only when absent (the epoch from ``epoch:{daemon}``, which only
  grows), renewed by its holder every third of the TTL, deleted by its holder when it
  hands the daemon back (SIGTERM, or more replicas joined: ``bridge.policy.shares``).
  Each is one Lua script, so a lease changes hands only through expiry or release.
* ``members``: a sorted set of live replicas, scored by their last round's time.
* ``claim:{model}`` = the daemon the first cold load of ``model`` goes to (``SET NX``
  with a TTL): replicas that would place it elsewhere follow it, so it loads once.
* the channel ``coord``: ``want`` (load this on your daemon), ``changed`` (look at the
  daemon's ``/api/ps``), ``released`` (a lease is free: take it now), ``failed`` (a
  wanted load failed), ``closing`` / ``closed`` (an unload ahead: stop sending it
  requests / none of mine in flight). These are hints:
  a lost one costs time, never correctness (wants are sent again while requests wait;
  every replica polls ``/api/ps`` anyway).

Every call has a timeout (``ALB_REDIS_TIMEOUT``, 100 ms by default) and no retries of
its own (redis-py's default is 10, with backoff: a hung Redis would hold a request for
seconds), behind one circuit breaker. A round that fails makes the replica
``degraded``: it owns every daemon, keeps the replica count it last saw, and tries
again each round; the first round that succeeds makes it ``shared`` again, and the
daemons whose leases it does not hold go back to their owners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from bridge.coord import Failure, Listener, Mode, Want
from bridge.metrics import Metrics
from bridge.policy import shares
from bridge.policy.health import Breaker

__all__ = ["Shared", "new_replica_id"]

log = logging.getLogger("alb.coord")

_TAKE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local e = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. e, 'PX', ARGV[2])
return e
"""
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: How often one (daemon, model) want is sent while its requests wait.
_WANT_EVERY_S: Final = 0.5
#: The soonest a round follows the last one when a request waits at a slot share.
_NUDGE_S: Final = 0.1
#: How long a claim's answer is kept locally (a burst asks once).
_CLAIM_CACHE_S: Final = 1.0
_FAILURES: Final = (RedisError, OSError, TimeoutError)


def new_replica_id() -> str:
    """``host-pid-random``: unique per process, readable in records."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Shared:
    """The Redis coordinator (module doc)."""

    def __init__(
        self,
        url: str,
        daemons: Sequence[str],
        *,
        replica: str | None = None,
        lease_ttl: float = 5.0,
        timeout: float = 0.1,
        claim_ttl: float = 60.0,
        quiesce_s: float = 10.0,
        namespace: str = "alb",
        metrics: Metrics | None = None,
    ) -> None:
        self._replica = replica or new_replica_id()
        self._daemons = list(daemons)
        self._ttl_ms = round(lease_ttl * 1000)
        self._interval = lease_ttl / 3
        self._timeout = timeout
        self._claim_ms = round(claim_ttl * 1000)
        self._ns = namespace
        self._metrics = metrics
        no_retry = Retry(NoBackoff(), 0)
        self._redis = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=no_retry
        )
        # The subscriber blocks on its socket between messages: no read timeout.
        self._sub = Redis.from_url(url, socket_connect_timeout=timeout, retry=no_retry)
        self._take = self._redis.register_script(_TAKE)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._breaker = Breaker(failures_to_open=1, cooldown=self._interval)
        self._mode = Mode.SHARED
        self._replicas = 1
        #: Daemons whose lease this replica holds, with the epoch.
        self._held: dict[str, int] = {}
        #: Owners as last read (for display), replica ids.
        self._owners: dict[str, str] = {}
        #: Each live replica's demand (requests in flight or queued) per daemon and
        #: model, as the last round read it (``share``).
        self._demands: dict[str, dict[str, dict[str, int]]] = {}
        self._listener: Listener | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._sub_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._wanted: dict[tuple[str, str], float] = {}
        self._claims: dict[str, tuple[float, str]] = {}
        self._subscribed = asyncio.Event()
        self._closing = False
        self._nudged = 0.0
        #: ``quiesce`` tokens waiting for the others' ``closed``: who answered, a wake-up.
        self._acks: dict[str, tuple[set[str], asyncio.Event]] = {}
        #: The longest an owner waits for the others before an unload.
        self._quiesce_s = quiesce_s

    # --- the seam --------------------------------------------------------------------
    @property
    def replica(self) -> str:
        return self._replica

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def replicas(self) -> int:
        return self._replicas

    def owns(self, daemon: str) -> bool:
        return self._mode is Mode.DEGRADED or daemon in self._held

    def owner(self, daemon: str) -> str | None:
        if self.owns(daemon):
            return self._replica
        return self._owners.get(daemon)

    def epoch(self, daemon: str) -> int:
        return self._held.get(daemon, 0)

    def nudge(self) -> None:
        """A request waits for a slot of this replica's share: run the next round soon
        (at most every ``_NUDGE_S``), so the shares follow the demand within that."""
        now = time.monotonic()
        if now - self._nudged >= _NUDGE_S:
            self._nudged = now
            self._wake.set()

    def share(self, daemon: str, model: str, slots: int) -> int:
        """This replica's share of ``model``'s ``slots`` on ``daemon``: by the demands
        the last round read (``shares.apportion``); an even split while degraded."""
        if self._mode is not Mode.SHARED:
            return shares.slot_share(slots, self._replicas)
        seen = self._demands.get(daemon, {})
        return shares.apportion(slots, {r: m.get(model, 0) for r, m in seen.items()}, self._replica)

    def others(self, daemon: str, model: str) -> int:
        if self._mode is not Mode.SHARED:
            return 0
        seen = self._demands.get(daemon, {})
        return sum(m.get(model, 0) for r, m in seen.items() if r != self._replica)

    async def start(self, listener: Listener) -> None:
        """Join: subscribe, then one round (a lone replica owns every daemon when this
        returns), then the rounds in the background."""
        self._listener = listener
        self._sub_task = asyncio.get_running_loop().create_task(self._listen())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(self._timeout * 5, 0.5)):
                await self._subscribed.wait()
        await self._round()
        self._loop_task = asyncio.get_running_loop().create_task(self._rounds())

    async def aclose(self) -> None:
        """Leave: hand every lease back (the others take them at once), then close."""
        self._closing = True  # a loop that sees a cancellation as a Redis error stops too
        tasks = [t for t in (self._loop_task, self._sub_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._mode is Mode.SHARED:
            for daemon in list(self._held):
                await self._hand_back(daemon)
            with contextlib.suppress(*_FAILURES):
                await self._redis.zrem(self._key("members"), self._replica)
        self._held.clear()
        await self._redis.aclose()
        await self._sub.aclose()

    async def claim(self, model: str, daemon: str) -> str:
        """The daemon the first cold load of ``model`` goes to: ``daemon`` if this
        replica claims it first (or Redis does not answer), else the first claimer's."""
        now = time.monotonic()
        cached = self._claims.get(model)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._mode is not Mode.SHARED or not self._breaker.allows_traffic(now):
            return daemon
        key = self._key(f"claim:{model}")
        try:
            async with asyncio.timeout(self._timeout * 2):
                pipe = self._redis.pipeline(transaction=False)
                pipe.set(key, daemon, nx=True, px=self._claim_ms)
                pipe.get(key)
                _, got = await pipe.execute()
        except _FAILURES as exc:
            self._failed("claim", exc)
            return daemon
        winner = got.decode() if isinstance(got, bytes) else daemon
        self._claims[model] = (now + _CLAIM_CACHE_S, winner)
        return winner

    def want(self, want: Want) -> None:
        """Tell ``want.daemon``'s owner (at most every half second per model)."""
        if self.owns(want.daemon):
            return
        now = time.monotonic()
        pair = (want.daemon, want.model)
        if self._wanted.get(pair, 0.0) > now:
            return
        self._wanted[pair] = now + _WANT_EVERY_S
        msg = {
            "k": "want",
            "d": want.daemon,
            "m": want.model,
            "t": want.tokens,
            "a": want.auto,
            "n": want.client_num_ctx,
            "c": want.replica,
        }
        self._publish(msg)

    def changed(self, daemon: str, model: str | None = None) -> None:
        """Tell the others to look at ``daemon``'s ``/api/ps`` (this replica changed
        ``model`` there; None: something)."""
        if self._mode is Mode.SHARED:
            self._publish({"k": "changed", "d": daemon, "m": model})

    def failed(self, failure: Failure) -> None:
        """Tell the replicas waiting for a load on a daemon this one owns that it failed."""
        if self._mode is Mode.SHARED:
            self._publish(
                {
                    "k": "failed",
                    "d": failure.daemon,
                    "m": failure.model,
                    "s": failure.status,
                    "e": failure.message,
                    "r": failure.retry_after,
                }
            )

    async def quiesce(self, daemon: str, model: str) -> None:
        """Before unloading ``model`` from ``daemon``: tell the others, and wait until
        each replica of the last round said ``closed`` (at most ``quiesce_s``)."""
        others = self._replicas - 1
        if self._mode is not Mode.SHARED or others < 1:
            return
        token = uuid.uuid4().hex
        acks: set[str] = set()
        woken = asyncio.Event()
        self._acks[token] = (acks, woken)
        self._publish({"k": "closing", "d": daemon, "m": model, "x": token})
        try:
            async with asyncio.timeout(self._quiesce_s):
                while len(acks) < others:
                    await woken.wait()
                    woken.clear()
        except TimeoutError:
            self._failed("quiesce", TimeoutError(f"{len(acks)} of {others} replicas closed"))
        finally:
            self._acks.pop(token, None)

    def admin(self, action: str, model: str, daemon: str | None) -> None:
        """Tell the others of an operator's pin, unpin or unload (``Listener.admin``)."""
        if self._mode is Mode.SHARED:
            self._publish({"k": "admin", "a": action, "m": model, "d": daemon})

    def closed(self, daemon: str, model: str, token: str) -> None:
        """This replica sends ``daemon`` no more requests for ``model`` (none in flight)."""
        self._publish({"k": "closed", "d": daemon, "m": model, "x": token})

    # --- rounds ----------------------------------------------------------------------
    async def _rounds(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            await self._round()

    async def _round(self) -> None:
        """Heartbeat, renew, take what is free up to the quota, hand back what is over."""
        now = time.monotonic()
        if not self._breaker.allows_traffic(now) and not self._breaker.wants_probe(now):
            return
        try:
            async with asyncio.timeout(self._timeout * 4 + 0.05 * len(self._daemons)):
                await self._round_trips()
        except _FAILURES as exc:
            self._failed("round", exc)
            self._degrade()
            return
        self._breaker.success()

    async def _round_trips(self) -> None:
        wall_ms = int(time.time() * 1000)
        members = self._key("members")
        leases = [self._key(f"lease:{d}") for d in self._daemons]
        mine = {} if self._listener is None else self._listener.demand()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(members, {self._replica: wall_ms})
        pipe.zremrangebyscore(members, 0, wall_ms - self._ttl_ms)
        pipe.zrange(members, 0, -1)
        pipe.mget(leases)
        for daemon in self._daemons:
            key = self._key(f"demand:{daemon}")
            pipe.hset(key, self._replica, orjson.dumps(dict(mine.get(daemon, {}))))
            pipe.pexpire(key, self._ttl_ms)
            pipe.hgetall(key)
        got = await pipe.execute()
        live, values = {m.decode() for m in got[2]}, got[3]
        self._set_replicas(len(live))
        demands: dict[str, dict[str, dict[str, int]]] = {}
        for i, daemon in enumerate(self._daemons):
            rows = got[4 + 3 * i + 2]
            demands[daemon] = {
                r.decode(): orjson.loads(v) for r, v in rows.items() if r.decode() in live
            }
        self._demands = demands
        owners: dict[str, str] = {}
        for daemon, value in zip(self._daemons, values, strict=True):
            if value is not None:
                owners[daemon] = value.decode().rsplit("|", 1)[0]
        self._owners = owners
        was_degraded = self._mode is Mode.DEGRADED
        self._mode = Mode.SHARED
        self._gauge_mode()
        if was_degraded and self._listener is not None:
            self._listener.mode_changed(Mode.SHARED)
        if was_degraded:
            log.warning("coordination: Redis answers again; shared mode")
            for daemon in self._daemons:
                if daemon not in self._held:  # owned only while degraded
                    self._notify_owner(daemon, owned=False)
        # Renew what is held; what is not (expired, or taken while Redis was away) is lost.
        for daemon, epoch in list(self._held.items()):
            ok = await self._renew(
                keys=[self._key(f"lease:{daemon}")],
                args=[f"{self._replica}|{epoch}", self._ttl_ms],
            )
            if not ok:
                self._lose(daemon)
        free = [d for d in self._daemons if d not in owners and d not in self._held]
        n = len(self._daemons)
        for daemon in shares.to_take(
            self._replica, list(self._held), free, daemons=n, replicas=self._replicas
        ):
            epoch = await self._take(
                keys=[self._key(f"lease:{daemon}"), self._key(f"epoch:{daemon}")],
                args=[self._replica, self._ttl_ms],
            )
            if epoch:
                self._held[daemon] = int(epoch)
                self._owners[daemon] = self._replica
                self._count("taken")
                self._notify_owner(daemon, owned=True)
        for daemon in shares.to_release(
            self._replica, list(self._held), daemons=n, replicas=self._replicas
        ):
            await self._hand_back(daemon)
        if self._listener is not None:
            self._listener.shares_changed()

    async def _hand_back(self, daemon: str) -> None:
        epoch = self._held.pop(daemon, None)
        if epoch is None:
            return
        self._notify_owner(daemon, owned=False)
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._release(
                    keys=[self._key(f"lease:{daemon}")], args=[f"{self._replica}|{epoch}"]
                )
                await self._redis.publish(
                    self._key("coord"), orjson.dumps({"k": "released", "d": daemon})
                )
        except _FAILURES as exc:
            self._failed("release", exc)  # it expires instead
        self._count("released")

    def _lose(self, daemon: str) -> None:
        self._held.pop(daemon, None)
        self._count("lost")
        self._notify_owner(daemon, owned=False)

    def _degrade(self) -> None:
        if self._mode is Mode.DEGRADED:
            return
        log.warning("coordination: Redis does not answer; degraded (serving on own state)")
        self._mode = Mode.DEGRADED
        self._gauge_mode()
        if self._listener is not None:
            self._listener.mode_changed(Mode.DEGRADED)
        for daemon in self._daemons:
            if daemon not in self._held:
                self._notify_owner(daemon, owned=True)

    # --- messages --------------------------------------------------------------------
    async def _listen(self) -> None:
        channel = self._key("coord")
        while not self._closing:
            try:
                async with self._sub.pubsub() as ps:
                    await ps.subscribe(channel)
                    self._subscribed.set()
                    async for msg in ps.listen():
                        if msg.get("type") == "message":
                            self._dispatch(orjson.loads(msg["data"]))
            except _FAILURES as exc:
                self._failed("subscribe", exc)
                self._subscribed.clear()
                await asyncio.sleep(self._interval)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg.get("from") == self._replica or self._listener is None:
            return
        kind, daemon = msg.get("k"), str(msg.get("d", ""))
        if kind == "want" and daemon in self._held:
            n = msg.get("n")
            self._listener.wanted(
                Want(
                    daemon,
                    str(msg["m"]),
                    int(msg["t"]),
                    bool(msg.get("a")),
                    int(n) if n is not None else None,
                    str(msg.get("from", "")),
                    bool(msg.get("c")),
                )
            )
        elif kind == "changed":
            model = msg.get("m")
            self._listener.changed(daemon, None if model is None else str(model))
        elif kind == "failed":
            r = msg.get("r")
            self._listener.load_failed(
                Failure(
                    daemon,
                    str(msg["m"]),
                    int(msg["s"]),
                    str(msg.get("e", "")),
                    float(r) if r is not None else None,
                )
            )
        elif kind == "released":
            self._wake.set()
        elif kind == "admin":
            d = msg.get("d")
            self._listener.admin(str(msg["a"]), str(msg["m"]), None if d is None else str(d))
        elif kind == "closing":
            self._listener.closing(daemon, str(msg["m"]), str(msg["x"]))
        elif kind == "closed":
            ack = self._acks.get(str(msg.get("x")))
            if ack is not None:
                ack[0].add(str(msg.get("from")))
                ack[1].set()

    def _publish(self, msg: dict[str, Any]) -> None:
        if not self._breaker.allows_traffic(time.monotonic()):
            return
        msg["from"] = self._replica
        task = asyncio.get_running_loop().create_task(self._send(orjson.dumps(msg)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, data: bytes) -> None:
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._redis.publish(self._key("coord"), data)
        except _FAILURES as exc:
            self._failed("publish", exc)

    # --- bookkeeping -----------------------------------------------------------------
    def _key(self, name: str) -> str:
        return f"{self._ns}:{name}"

    def _notify_owner(self, daemon: str, *, owned: bool) -> None:
        if self._metrics is not None:
            self._metrics.daemon_owned.labels(daemon=daemon).set(1 if self.owns(daemon) else 0)
        if self._listener is not None:
            self._listener.owner_changed(daemon, owned)

    def _set_replicas(self, n: int) -> None:
        n = max(n, 1)
        if self._metrics is not None:
            self._metrics.coord_replicas.set(n)
        if n != self._replicas:
            self._replicas = n
            if self._listener is not None:
                self._listener.replicas_changed(n)

    def _gauge_mode(self) -> None:
        if self._metrics is not None:
            for mode in Mode:
                self._metrics.coord_mode.labels(mode=mode.value).set(1 if mode is self._mode else 0)

    def _count(self, action: str) -> None:
        if self._metrics is not None:
            self._metrics.leases.labels(action=action).inc()

    def _failed(self, op: str, exc: BaseException) -> None:
        self._breaker.failure(time.monotonic(), f"{type(exc).__name__}: {exc}")
        if self._metrics is not None:
            self._metrics.coord_errors.labels(op=op).inc()
        log.debug("coordination: %s failed: %r", op, exc)
