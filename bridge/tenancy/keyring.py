"""Who is asking: the keys every replica holds in memory, kept fresh from the store.

``Keyring`` loads every key at start-up and then polls the store's version every
``ALB_KEYS_REFRESH`` seconds (1 s by default), reloading the set when it moved. So a
lookup on the request path is a dict read and one HMAC, never a store round trip, and
a revocation or rotation takes effect on every replica within one refresh interval
plus the store's round trip (the bound the README states). While the store is
unreachable the last set stays in force (a key revoked meanwhile is refused once the
store answers again) and ``alb_keys_refresh_errors_total`` counts the failures.

``authenticate`` reads ``Authorization: Bearer <token>`` (the ``openai`` client's
``api_key``; the ``ollama`` client's ``headers``) or ``X-API-Key``. The admin token
(``ALB_ADMIN_TOKEN``), given the same way or as ``X-ALB-Admin-Token``, is one more way
to hold ``admin`` (and ``read``).

``create``, ``revoke``, ``rotate``: what ``alb keys`` runs against a store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from prometheus_client import CollectorRegistry, Counter, Gauge

from bridge.errors import Unauthorized
from bridge.policy.keys import (
    ADMIN_TOKEN,
    KeyRecord,
    Limits,
    Principal,
    Scope,
    check_patterns,
    check_priority,
    mint,
    remint,
    token_id,
    verify,
)
from bridge.tenancy.store import KeyStore

log = logging.getLogger("alb.keys")


class KeyringMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refresh_errors = Counter(
            "alb_keys_refresh_errors",
            "Failed polls of the key store (the last key set stays in force).",
            registry=registry,
        )
        self.keys = Gauge(
            "alb_keys", "Keys this replica holds, by state.", ["state"], registry=registry
        )
        self.age = Gauge(
            "alb_keys_snapshot_age_seconds",
            "Seconds since this replica last read the key store successfully.",
            registry=registry,
        )
        self.refused = Counter(
            "alb_keys_refused",
            "Requests refused for their credentials: missing, malformed, unknown, revoked, "
            "scope, model.",
            ["reason"],
            registry=registry,
        )


class Keyring:
    """The key set in memory (module doc)."""

    def __init__(
        self,
        store: KeyStore,
        *,
        pepper: bytes | None,
        admin_token: str | None,
        refresh_s: float = 1.0,
        metrics: KeyringMetrics | None = None,
    ) -> None:
        self._store = store
        self._pepper = pepper
        self._admin = admin_token.encode() if admin_token else None
        self._refresh_s = refresh_s
        self._metrics = metrics
        self._keys: dict[str, KeyRecord] = {}
        self._version: int | None = None
        self._read_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()

    # --- life -------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the set (if the store answers) and start polling."""
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._poll(), name="alb-keyring")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._store.aclose()

    async def refresh(self) -> bool:
        """Reload when the store's version moved; True when it answered."""
        try:
            version = await self._store.version()
            if version != self._version:
                records = await self._store.all()
                self._keys = {r.id: r for r in records}
                self._version = version
                self._gauge()
        except Exception as exc:  # any store failure: keep the last set
            if self._metrics is not None:
                self._metrics.refresh_errors.inc()
            log.warning("key store unreachable, keeping %d keys: %s", len(self._keys), exc)
            return False
        self._read_at = time.monotonic()
        self.loaded.set()
        if self._metrics is not None:
            self._metrics.age.set(0)
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()
            if self._metrics is not None:
                self._metrics.age.set(round(time.monotonic() - self._read_at, 3))

    def _gauge(self) -> None:
        if self._metrics is None:
            return
        active = sum(1 for r in self._keys.values() if r.active)
        self._metrics.keys.labels(state="active").set(active)
        self._metrics.keys.labels(state="revoked").set(len(self._keys) - active)

    # --- the request path ---------------------------------------------------------------
    def get(self, key_id: str) -> KeyRecord | None:
        return self._keys.get(key_id)

    def authenticate(self, headers: Sequence[tuple[bytes, bytes]]) -> Principal:
        """The caller named by ``headers``; ``Unauthorized`` when there is none or the
        credential is wrong (the message never echoes it)."""
        given = admin = None
        for name, value in headers:
            if name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    given = value[7:].strip()
            elif name == b"x-api-key":
                given = given or value.strip()
            elif name == b"x-alb-admin-token":
                admin = value.strip()
        if admin is not None and self._is_admin(admin):
            return ADMIN_TOKEN
        if not given:
            self._refuse("missing")
            raise Unauthorized(
                "an API key is needed: Authorization: Bearer <key> or X-API-Key <key>"
            )
        if self._is_admin(given):
            return ADMIN_TOKEN
        try:
            token = given.decode("ascii")
        except UnicodeDecodeError:
            token = ""
        ident = token_id(token)
        if ident is None:
            self._refuse("malformed")
            raise Unauthorized("the API key is not a key this bridge issues")
        record = self._keys.get(ident)
        if record is None or not verify(record, token, self._pepper):
            self._refuse("unknown")
            raise Unauthorized("the API key is not known")
        if not record.active:
            self._refuse("revoked")
            raise Unauthorized(f"the API key {ident} is revoked")
        return Principal(record.scopes, record)

    def _is_admin(self, given: bytes) -> bool:
        return self._admin is not None and hmac.compare_digest(given, self._admin)

    def _refuse(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.refused.labels(reason=reason).inc()

    def refused(self, reason: str) -> None:
        """Count a refusal decided elsewhere (scope, model)."""
        self._refuse(reason)


# --- administration (``alb keys``) ------------------------------------------------------


async def create(
    store: KeyStore,
    name: str,
    scopes: frozenset[Scope],
    *,
    models: Sequence[str] = (),
    limits: Limits | None = None,
    priority: int = 1,
    pepper: bytes | None = None,
) -> tuple[str, KeyRecord]:
    """A new key: ``(token, record)``; the token is shown once and never stored."""
    if not scopes:
        raise ValueError("a key needs at least one scope")
    token, ident, digest = mint(pepper)
    record = KeyRecord(
        id=ident,
        name=name,
        digest=digest,
        scopes=scopes,
        models=check_patterns(models),
        limits=limits or Limits(),
        priority=check_priority(priority),
        created_at=time.time(),
    )
    await store.put(record)
    return token, record


async def revoke(store: KeyStore, key_id: str) -> KeyRecord:
    record = await _existing(store, key_id)
    if record.revoked_at is None:
        record = replace(record, revoked_at=time.time())
        await store.put(record)
    return record


async def rotate(
    store: KeyStore, key_id: str, pepper: bytes | None = None
) -> tuple[str, KeyRecord]:
    """A new secret for the same id, scopes and limits; the old token stops working
    (within the refresh bound)."""
    record = await _existing(store, key_id)
    if record.revoked_at is not None:
        raise ValueError(f"key {key_id} is revoked")
    token, digest = remint(record.id, pepper)
    record = replace(record, digest=digest, rotated_at=time.time())
    await store.put(record)
    return token, record


async def _existing(store: KeyStore, key_id: str) -> KeyRecord:
    record = await store.get(key_id)
    if record is None:
        raise LookupError(f"no key {key_id}")
    return record
