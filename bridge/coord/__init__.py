"""Coordination between bridge replicas: one seam, two implementations.

``Solo`` (no ``ALB_REDIS_URL``): this process is the only replica and owns every
daemon. ``Shared`` (``bridge.coord.shared``, ``ALB_REDIS_URL`` set): the replicas share
the fleet through Redis. Each daemon has one owner, holding a renewed lease with an
epoch; the owner carries out every load, eviction, unload and replica decision for
that daemon. The other replicas hand it their needs (``want``) and follow what it did
through the daemon's own ``/api/ps`` (the ground truth), prompted by its ``changed``
notices. The first load of a cold model goes where the first replica to ``claim`` it
put it, so replicas that would each place it elsewhere load it once.

Before an owner unloads a model (an eviction, a reload, an idle unload, a retired
copy) it ``quiesce``s it: the other replicas stop sending requests for it there and
say ``closed`` once theirs in flight have finished, and they open it again only from a
``/api/ps`` read made after the owner's next ``changed`` (a read from before could
show the runner that is going away). So a request never reaches a daemon for a model
that is not loaded, and Ollama never has to choose an eviction.

Nothing here is on the warm request path: ``owns``, ``mode`` and ``replicas`` are
local reads; ``want`` and ``changed`` are fire-and-forget; ``claim`` is awaited only by
a request that waits for a load anyway. When Redis stops answering, ``Shared`` is
``degraded``: it owns every daemon (at most one load per model per replica, as the
scheduler's own gates make it) and keeps the membership it last saw for the slot
shares; it goes back to shared by itself when Redis answers again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

__all__ = ["Coordinator", "Failure", "Listener", "Mode", "Solo", "Want"]


class Mode(StrEnum):
    SOLO = "solo"
    SHARED = "shared"
    DEGRADED = "degraded"


@dataclass(frozen=True, slots=True)
class Want:
    """A replica's request that ``daemon``'s owner load ``model`` for a request needing
    ``tokens`` of context (``auto``: the OpenAI surface's default context)."""

    daemon: str
    model: str
    tokens: int
    auto: bool = False
    client_num_ctx: int | None = None
    sender: str = ""
    #: A copy of a hot model (``bridge.policy.replicas``): its owner retires it.
    replica: bool = False


class Listener(Protocol):
    """What a coordinator tells the scheduler."""

    def owner_changed(self, daemon: str, owned: bool) -> None:
        """This replica took (``owned``) or lost ``daemon``."""

    def replicas_changed(self, replicas: int) -> None:
        """The number of live replicas changed."""

    def shares_changed(self) -> None:
        """A round read the replicas' demands: ``Coordinator.share`` may answer anew."""

    def demand(self) -> Mapping[str, Mapping[str, int]]:
        """This replica's requests in flight or queued, per daemon and model."""

    def wanted(self, want: Want) -> None:
        """Another replica needs a load on a daemon this replica owns."""

    def changed(self, daemon: str, model: str | None) -> None:
        """``daemon``'s owner loaded or unloaded ``model`` there (None: something; ``*``:
        it took the daemon over, forget its predecessor's unloads): look at ``/api/ps``."""

    def load_failed(self, failure: Failure) -> None:
        """The owner could not carry out a load this replica (or another) wanted."""

    def mode_changed(self, mode: Mode) -> None:
        """Redis stopped answering (``DEGRADED``) or answers again (``SHARED``)."""

    def admin(self, action: str, model: str, daemon: str | None) -> None:
        """An operator's ``pin`` / ``unpin`` (every replica keeps the pins) or
        ``unload`` (the daemon's owner carries it out) sent to another replica."""

    def closing(self, daemon: str, model: str, token: str) -> None:
        """``daemon``'s owner is about to unload ``model``: stop sending it requests
        there, and answer ``Coordinator.closed(daemon, model, token)`` once none of
        this replica's is in flight."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A wanted load that failed on its owner, as the owner's error said it."""

    daemon: str
    model: str
    status: int
    message: str
    retry_after: float | None = None


class Coordinator(Protocol):
    """The seam (``Solo``, ``bridge.coord.shared.Shared``)."""

    @property
    def replica(self) -> str: ...

    @property
    def mode(self) -> Mode: ...

    @property
    def replicas(self) -> int: ...

    def owns(self, daemon: str) -> bool: ...

    def owner(self, daemon: str) -> str | None: ...

    def epoch(self, daemon: str) -> int: ...

    def share(self, daemon: str, model: str, slots: int) -> int: ...

    def others(self, daemon: str, model: str) -> int:
        """The other replicas' requests in flight or queued for ``model`` on ``daemon``
        (their peaks as the last round read them; 0 alone or degraded): what a
        ``Retry-After`` must count besides this replica's own queue."""

    def nudge(self) -> None: ...

    async def start(self, listener: Listener) -> None: ...

    async def aclose(self) -> None: ...

    async def claim(self, model: str, daemon: str) -> str: ...

    def want(self, want: Want) -> None: ...

    def changed(self, daemon: str, model: str | None = None) -> None: ...

    def failed(self, failure: Failure) -> None: ...

    async def quiesce(self, daemon: str, model: str) -> None: ...

    def admin(self, action: str, model: str, daemon: str | None) -> None: ...

    def closed(self, daemon: str, model: str, token: str) -> None: ...


class Solo:
    """The only replica: owns every daemon, claims always win, nothing to tell."""

    def __init__(self, replica: str = "solo") -> None:
        self._replica = replica

    @property
    def replica(self) -> str:
        return self._replica

    @property
    def mode(self) -> Mode:
        return Mode.SOLO

    @property
    def replicas(self) -> int:
        return 1

    def owns(self, daemon: str) -> bool:
        return True

    def owner(self, daemon: str) -> str | None:
        return self._replica

    def epoch(self, daemon: str) -> int:
        return 0

    def share(self, daemon: str, model: str, slots: int) -> int:
        return slots

    def others(self, daemon: str, model: str) -> int:
        return 0

    def nudge(self) -> None:
        pass

    async def start(self, listener: Listener) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def claim(self, model: str, daemon: str) -> str:
        return daemon

    def want(self, want: Want) -> None:
        pass

    def changed(self, daemon: str, model: str | None = None) -> None:
        pass

    def failed(self, failure: Failure) -> None:
        pass

    async def quiesce(self, daemon: str, model: str) -> None:
        pass

    def closed(self, daemon: str, model: str, token: str) -> None:
        pass

    def admin(self, action: str, model: str, daemon: str | None) -> None:
        pass
