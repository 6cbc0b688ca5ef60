"""The coordinator the settings ask for: ``Shared`` with ``ALB_REDIS_URL``, else ``Solo``."""

from __future__ import annotations

from bridge.coord import Coordinator, Solo
from bridge.coord.shared import Shared, new_replica_id
from bridge.metrics import Metrics
from bridge.settings import Settings

__all__ = ["open_coordinator"]


def open_coordinator(settings: Settings, metrics: Metrics | None = None) -> Coordinator:
    """A coordinator for the scheduler (it starts and closes it)."""
    replica = settings.replica_id or new_replica_id()
    if settings.redis_url is None:
        if metrics is not None:
            metrics.coord_mode.labels(mode="solo").set(1)
        return Solo(replica)
    return Shared(
        settings.redis_url.get_secret_value(),
        [d.name for d in settings.daemon_specs()],
        replica=replica,
        lease_ttl=settings.lease_ttl,
        timeout=settings.redis_timeout,
        namespace=settings.coord_namespace,
        metrics=metrics,
    )
