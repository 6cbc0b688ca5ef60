"""The bridge's topics, their settings, and an idempotent create / describe on Kafka.

Choices (DESIGN.md "Topics and events"):

- **No topic is compacted.** Compaction keeps the last record per key forever and
  drops the rest. The access log and decisions are histories (analytics and replay
  need every record). Model state looks like state, but its key is the model while
  the state is per (daemon, model), and its value to the predictor is the history
  of loads, evictions and durations; a "current state" view is the bridge's
  ``/alb/v1/models``, not a topic. Prefetch and warm-cache events are commands
  that expire within minutes: compaction would keep the last stale one per model
  forever, where a short time retention lets them go. Model hints too: the worker
  publishes a fresh one per model on every tick, so a bridge that starts reading
  from the end has them all within one tick.
- **Partitions** set the parallelism of a consumer group and are fixed for good:
  adding partitions moves keys to other partitions and breaks per-key order, so
  ``ensure_topics`` never changes a count, it reports the drift.
- **Retention**: access log 7 days, decisions 14, model state 30 (small and slow),
  prefetch / warm-cache / model hints 1 hour.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from ingest.bus import BusUnavailable
from ingest.messages import Topic

_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: name, partitions and the topic-level configs we care about."""

    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    extra: dict[str, str] = field(default_factory=dict)

    def configs(self) -> dict[str, str]:
        """The topic configs to set (all strings, as Kafka takes them)."""
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            **self.extra,
        }


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(Topic.ACCESS_LOG.value, partitions=6, retention_ms=7 * _DAY_MS),
    TopicSpec(Topic.MODEL_STATE.value, partitions=3, retention_ms=30 * _DAY_MS),
    TopicSpec(Topic.DECISIONS.value, partitions=3, retention_ms=14 * _DAY_MS),
    TopicSpec(Topic.PREFETCH.value, partitions=3, retention_ms=_HOUR_MS),
    TopicSpec(Topic.WARM_CACHE.value, partitions=3, retention_ms=_HOUR_MS),
    TopicSpec(Topic.MODEL_HINTS.value, partitions=3, retention_ms=_HOUR_MS),
)


@dataclass(frozen=True, slots=True)
class TopicState:
    """What Kafka says about a topic, and how it differs from its spec."""

    name: str
    exists: bool
    partitions: int | None
    replication: int | None
    configs: dict[str, str]
    drift: list[str]
    created: bool = False


async def ensure_topics(
    bootstrap: str,
    specs: Sequence[TopicSpec] = TOPICS,
    *,
    replication_factor: int | None = None,
    create: bool = True,
) -> list[TopicState]:
    """Create the missing topics (if ``create``) and describe all of them.

    Idempotent: an existing topic is left as it is; how it differs from its spec is
    listed in ``drift``. ``replication_factor`` defaults to min(3, brokers), with
    ``min.insync.replicas`` = 2 when it is 3 or more.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    try:
        await admin.start()
        created: set[str] = set()
        if create:
            existing = set(await admin.list_topics())
            missing = [s for s in specs if s.name not in existing]
            if missing:
                replication = replication_factor or min(3, await _broker_count(admin))
                await _create(admin, missing, replication)
                created = {s.name for s in missing}
        states = await _describe(admin, specs)
        for _ in range(50):  # a new topic reaches the brokers' metadata a moment later
            if not any(s.name in created and not s.exists for s in states):
                break
            await asyncio.sleep(0.1)
            states = await _describe(admin, specs)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BusUnavailable(f"Kafka admin at {bootstrap} failed: {exc!r}") from exc
    finally:
        await admin.close()
    return [dataclasses.replace(s, created=s.name in created) for s in states]


async def describe_topics(bootstrap: str, specs: Sequence[TopicSpec] = TOPICS) -> list[TopicState]:
    """Describe the topics without creating anything."""
    return await ensure_topics(bootstrap, specs, create=False)


async def _broker_count(admin: AIOKafkaAdminClient) -> int:
    cluster = await admin.describe_cluster()
    return max(1, len(cluster.get("brokers", [])))


async def _create(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], replication: int) -> None:
    new = []
    for spec in specs:
        configs = spec.configs()
        if replication >= 3:
            configs.setdefault("min.insync.replicas", "2")
        new.append(NewTopic(spec.name, spec.partitions, replication, topic_configs=configs))
    try:
        response = await admin.create_topics(new)
    except TopicAlreadyExistsError:
        return  # someone else created it between our list and our create
    for name, code, *rest in getattr(response, "topic_errors", []):
        if code not in (0, TopicAlreadyExistsError.errno):
            raise BusUnavailable(f"creating {name} failed: error {code} {rest}")


async def _describe(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> list[TopicState]:
    described = {t["topic"]: t for t in await admin.describe_topics([s.name for s in specs])}
    present = [s for s in specs if described.get(s.name, {}).get("error_code", 3) == 0]
    configs = await _configs(admin, [s.name for s in present])
    states = []
    for spec in specs:
        info = described.get(spec.name)
        if spec not in present or info is None:
            states.append(TopicState(spec.name, False, None, None, {}, ["missing"]))
            continue
        partitions = info["partitions"]
        replication = len(partitions[0]["replicas"]) if partitions else 0
        actual = configs.get(spec.name, {})
        drift = [
            f"{key}={actual.get(key)!r}, spec says {want!r}"
            for key, want in spec.configs().items()
            if actual.get(key) != want
        ]
        if len(partitions) != spec.partitions:
            drift.insert(
                0, f"partitions={len(partitions)}, spec says {spec.partitions} (not changed)"
            )
        states.append(TopicState(spec.name, True, len(partitions), replication, actual, drift))
    return states


async def _configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    out: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.resources:
            _code, _message, _type, name, entries = resource[:5]
            out[name] = {e[0]: e[1] for e in entries if _is_config(e)}
    return out


def _is_config(entry: Any) -> bool:
    return isinstance(entry[0], str) and isinstance(entry[1], str | None)
