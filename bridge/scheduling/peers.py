"""What the other replicas mean to this one's scheduler (``bridge.coord.Listener``).

* A daemon this replica now owns: read its ``/api/ps`` and kick its driver, which
  carries out the loads its requests wait for (and any a dead owner left undone: the
  other replicas keep asking while their requests wait).
* A daemon it no longer owns: kick its driver, which from now on asks the owner.
* Another replica wants a load on a daemon this one owns: load it as an admin load is
  loaded (a waiter at the gate, so the driver loads it in turn, with its evictions),
  once per (daemon, model) at a time; if it fails, say so, and the asking replicas
  give their waiters the error.
* The owner changed a daemon: read its ``/api/ps`` (the ground truth), which opens or
  closes this replica's gates there (``Upkeep.reconcile``).
* The number of replicas changed: every gate's slots become this replica's share.
* A round read the others' demands: a runner they use counts as used now, so the owner
  judges idleness (eviction value, idle unloads, retiring a copy) by every replica's
  requests, not its own gate's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final, Protocol

from bridge.coord import Coordinator, Failure, Mode, Want
from bridge.errors import BridgeError
from bridge.policy.numctx import Need
from bridge.scheduling.decisions import DecisionLog
from bridge.scheduling.fleet import Fleet
from bridge.scheduling.gate import Gate

log = logging.getLogger("alb.peers")

__all__ = ["Peers"]

#: The longest a replica keeps the owner waiting for its requests in flight to finish.
_IDLE_WAIT_S: Final = 30.0


class PeerHooks(Protocol):
    """What ``Peers`` asks of the scheduler."""

    fleet: Fleet
    decisions: DecisionLog
    gates: dict[tuple[str, str], Gate]
    fences: dict[tuple[str, str], float | None]
    replicas: set[tuple[str, str]]
    used_at: dict[tuple[str, str], float]

    def kick(self, daemon: str) -> None: ...

    def spawn_task(self, coro: object) -> None: ...

    async def recheck(self, daemon: str) -> None: ...

    async def load_for(self, key: str, daemon: str, need: Need) -> str: ...

    async def unload_model(
        self, key: str, daemon: str | None, reason: str, *, force: bool = False
    ) -> list[str]: ...

    pins: set[tuple[str, str | None]]

    def fail_waiters(self, failure: Failure) -> None: ...


class Peers:
    """The scheduler's ``Listener`` (module doc)."""

    def __init__(self, coord: Coordinator, hooks: PeerHooks) -> None:
        self._coord = coord
        self._hooks = hooks
        self._loading: set[tuple[str, str]] = set()
        self._rechecking: set[str] = set()
        self._again: set[str] = set()

    def owner_changed(self, daemon: str, owned: bool) -> None:
        if daemon not in self._hooks.fleet.daemons:
            return
        mode = self._coord.mode
        why = ("owns" if mode is Mode.DEGRADED else "took-lease") if owned else "gave-up-lease"
        self._hooks.decisions.record(
            "coordination",
            "",
            daemon,
            why,
            replica=self._coord.replica,
            epoch=self._coord.epoch(daemon),
            mode=mode.value,
        )
        if owned:
            self.changed(daemon, "*")
            self._coord.changed(daemon, "*")  # the others forget its predecessor's unloads
        self._hooks.kick(daemon)

    def mode_changed(self, mode: Mode) -> None:
        if mode is Mode.DEGRADED:
            self._hooks.fences.clear()  # it owns every daemon now: /api/ps is its truth
        reason = "degraded" if mode is Mode.DEGRADED else "shared-again"
        self._hooks.decisions.record(
            "coordination", "", "", reason, replica=self._coord.replica, mode=mode.value
        )

    def replicas_changed(self, replicas: int) -> None:
        self.shares_changed()

    def shares_changed(self) -> None:
        """Every gate hands out this replica's share of its daemon's slots, and a
        runner the other replicas had requests on since the last round was used now."""
        for (name, key), gate in self._hooks.gates.items():
            d = self._hooks.fleet.daemons.get(name)
            if d is not None:
                gate.resize(self._coord.share(name, key, d.spec.parallel))
        now = time.monotonic()
        for d in self._hooks.fleet.daemons.values():
            for key in d.loaded:
                if self._coord.others(d.name, key):
                    self._hooks.used_at[(d.name, key)] = now

    def demand(self) -> dict[str, dict[str, int]]:
        """Per daemon and model, the most requests in flight or queued at once since the
        last round (a snapshot would read a busy replica as idle between requests)."""
        out: dict[str, dict[str, int]] = {}
        for (name, key), gate in self._hooks.gates.items():
            peak = gate.take_peak()
            if peak:
                out.setdefault(name, {})[key] = peak
        return out

    def wanted(self, want: Want) -> None:
        pair = (want.daemon, want.model)
        if want.daemon not in self._hooks.fleet.daemons or pair in self._loading:
            return
        self._loading.add(pair)
        self._hooks.spawn_task(self._load(want))

    async def _load(self, want: Want) -> None:
        need = Need(
            want.tokens,
            auto=want.auto,
            client_num_ctx=want.client_num_ctx,
            translate=want.auto,
        )
        try:
            if want.replica:
                self._hooks.replicas.add((want.daemon, want.model))
            await self._hooks.load_for(want.model, want.daemon, need)
        except BridgeError as exc:
            self._hooks.replicas.discard((want.daemon, want.model))
            log.info(
                "load of %s on %s for %s failed: %s", want.model, want.daemon, want.sender, exc
            )
            self._coord.failed(
                Failure(want.daemon, want.model, exc.status, exc.message, exc.retry_after)
            )
        finally:
            self._loading.discard((want.daemon, want.model))
            self._coord.changed(want.daemon)

    def load_failed(self, failure: Failure) -> None:
        if failure.daemon in self._hooks.fleet.daemons and not self._coord.owns(failure.daemon):
            self._hooks.fail_waiters(failure)

    def admin(self, action: str, model: str, daemon: str | None) -> None:
        """An operator's pin or unpin holds on every replica; an unload is carried out
        by the daemon's owner (here, for the daemons this replica owns)."""
        pins = self._hooks.pins
        if action == "pin":
            pins.add((model, daemon))
        elif action == "unpin":
            pins.discard((model, daemon))
            if daemon is None:
                pins.difference_update({p for p in pins if p[0] == model})
        elif action == "unload":
            for name in self._hooks.fleet.daemons:
                if (daemon is None or name == daemon) and self._coord.owns(name):
                    self._hooks.spawn_task(self._unload(model, name))

    async def _unload(self, model: str, daemon: str) -> None:
        try:
            await self._hooks.unload_model(model, daemon, "admin")
        except BridgeError as exc:  # pinned there: the asking replica said so already
            log.info("unload of %s on %s for another replica: %s", model, daemon, exc)

    def closing(self, daemon: str, model: str, token: str) -> None:
        """The owner is about to unload ``model`` there: close this replica's gate (new
        requests wait, or go elsewhere), fence it until the owner's next change, and
        say ``closed`` once this replica's requests in flight there have finished."""
        if daemon not in self._hooks.fleet.daemons:
            return
        self._hooks.fences[(daemon, model)] = None
        gate = self._hooks.gates.get((daemon, model))
        if gate is not None:
            gate.close()
        self._hooks.spawn_task(self._closed_when_idle(daemon, model, token, gate))

    async def _closed_when_idle(
        self, daemon: str, model: str, token: str, gate: Gate | None
    ) -> None:
        if gate is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_IDLE_WAIT_S):
                    await gate.until_idle()
        self._coord.closed(daemon, model, token)

    def changed(self, daemon: str, model: str | None = None) -> None:
        """Read ``daemon``'s ``/api/ps`` now (one read at a time; one more if asked
        again meanwhile). A change of a fenced model (its unload done, or it is loaded
        again), or a new owner (``*``), lifts the fence for reads asked from now on."""
        if daemon not in self._hooks.fleet.daemons:
            return
        now = time.monotonic()
        fences = self._hooks.fences
        for pair, fence in list(fences.items()):
            if pair[0] == daemon and fence is None and model in {pair[1], "*"}:
                fences[pair] = now
        if daemon in self._rechecking:
            self._again.add(daemon)
            return
        self._rechecking.add(daemon)
        self._hooks.spawn_task(self._recheck(daemon))

    async def _recheck(self, daemon: str) -> None:
        try:
            while True:
                self._again.discard(daemon)
                await self._hooks.recheck(daemon)
                if daemon not in self._again:
                    return
        finally:
            self._rechecking.discard(daemon)
