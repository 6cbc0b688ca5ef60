"""Tenancy (issue #16): API keys with scopes, per-key limits held across replicas, and
what each key used.

``bridge.policy.keys`` is the data (token format, record, scopes, limits);
``store`` the seam to where keys live (SQLite embedded, Redis distributed);
``keyring`` who is asking (the key set in memory, refreshed by version);
``quotas`` the limits and the usage accounting. ``open_tenancy`` builds all three for
the app's lifespan when ``ALB_AUTH=keys``; ``bridge.http.gatekeeper`` applies them at
the edge of the routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from bridge.settings import Settings
from bridge.tenancy.keyring import Keyring, KeyringMetrics
from bridge.tenancy.quotas import QuotaMetrics, Quotas
from bridge.tenancy.store import KeyStore, RedisKeys, SqliteKeys, default_keys_file

__all__ = ["Tenancy", "open_store", "open_tenancy"]


@dataclass(slots=True)
class Tenancy:
    keyring: Keyring
    quotas: Quotas
    #: Output tokens a request reserves when it names no cap (``ALB_KEYS_OUTPUT_RESERVE``).
    output_reserve: int


def open_store(settings: Settings) -> KeyStore:
    """Redis with ``ALB_REDIS_URL``, else the SQLite file."""
    if settings.redis_url is not None:
        return RedisKeys(
            settings.redis_url.get_secret_value(),
            namespace=settings.coord_namespace,
            timeout=max(settings.redis_timeout, 0.5),
        )
    return SqliteKeys(settings.keys_file or default_keys_file())


def pepper_of(settings: Settings) -> bytes | None:
    pepper = settings.keys_pepper
    return None if pepper is None else pepper.get_secret_value().encode()


@asynccontextmanager
async def open_tenancy(
    settings: Settings,
    registry: CollectorRegistry,
    *,
    replicas: Callable[[], int],
    replica: str,
) -> AsyncIterator[Tenancy]:
    store = open_store(settings)
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    keyring = Keyring(
        store,
        pepper=pepper_of(settings),
        admin_token=admin,
        refresh_s=settings.keys_refresh,
        metrics=KeyringMetrics(registry),
    )
    usage_store = open_store(settings)
    quotas = Quotas(
        usage_store,
        redis_url=None if settings.redis_url is None else settings.redis_url.get_secret_value(),
        namespace=settings.coord_namespace,
        timeout=settings.redis_timeout,
        replicas=replicas,
        replica=replica,
        request_timeout=settings.request_timeout,
        metrics=QuotaMetrics(registry),
        metrics_keys=settings.keys_metrics_max,
    )
    await keyring.start()
    quotas.start()
    try:
        yield Tenancy(keyring, quotas, settings.keys_output_reserve)
    finally:
        await quotas.aclose()
        await usage_store.aclose()
        await keyring.aclose()
