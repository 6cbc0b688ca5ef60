"""The system-prompt registry: hash -> text, bounded, with a TTL.

Events carry only ``system_prompt_hash`` (``ingest.hashing``). To act on a
warm-cache event the bridge needs the text back, so it registers each system
prompt it forwards here. Two implementations behind one Protocol, one contract
test: ``MemoryPromptRegistry`` (embedded mode, one process) and
``RedisPromptRegistry`` (shared by every bridge replica).

Bounds: at most ``max_entries`` prompts (least recently registered go first),
each kept ``ttl_s`` after it was last registered, none longer than
``max_text_bytes`` (a longer prompt is not kept; its hash is still returned).
Registering is cheap to repeat: the Redis one skips a prompt this process
registered less than ``refresh_s`` ago, so a hot prompt costs one round trip a
minute, not one per request.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ingest.errors import RegistryUnavailable
from ingest.hashing import system_prompt_hash


@dataclass(frozen=True, slots=True)
class PromptRegistryConfig:
    """Bounds of the registry."""

    max_entries: int = 10_000
    ttl_s: float = 24 * 3600.0
    max_text_bytes: int = 256 * 1024
    refresh_s: float = 60.0


class PromptRegistry(Protocol):
    """hash -> system prompt text."""

    async def put(self, text: str) -> str:
        """Register ``text`` (or refresh its TTL and recency); return its hash."""
        ...

    async def get(self, digest: str) -> str | None:
        """The text registered under ``digest``, or None (unknown, expired or evicted)."""
        ...


class MemoryPromptRegistry:
    """An LRU dict with expiry, for one process."""

    def __init__(
        self,
        config: PromptRegistryConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or PromptRegistryConfig()
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def put(self, text: str) -> str:
        digest = system_prompt_hash(text)
        if len(text.encode("utf-8")) > self.config.max_text_bytes:
            return digest
        self._entries[digest] = (text, self._clock() + self.config.ttl_s)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.config.max_entries:
            self._entries.popitem(last=False)
        return digest

    async def get(self, digest: str) -> str | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        text, expires = entry
        if self._clock() >= expires:
            del self._entries[digest]
            return None
        return text


# One round trip, atomic: store the text with its TTL, note its recency in a sorted
# set (score: milliseconds, strictly increasing, so two puts in one millisecond keep
# their order), forget index entries whose text has expired, evict the least recent
# beyond the bound. The hash tag in the key names keeps them in one Cluster slot.
_PUT = """
local index, prefix = KEYS[1], ARGV[1]
local digest, text = ARGV[2], ARGV[3]
local ttl_ms, now_ms, max_entries = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('SET', prefix .. digest, text, 'PX', ttl_ms)
local newest = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
local score = now_ms
if newest[2] and tonumber(newest[2]) >= score then score = tonumber(newest[2]) + 1 end
redis.call('ZADD', index, score, digest)
redis.call('ZREMRANGEBYSCORE', index, '-inf', now_ms - ttl_ms)
local extra = redis.call('ZCARD', index) - max_entries
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', index, 0, extra - 1)) do
    redis.call('DEL', prefix .. old)
  end
  redis.call('ZREMRANGEBYRANK', index, 0, extra - 1)
end
return extra
"""


class RedisPromptRegistry:
    """The registry in Redis, shared by bridge replicas. The caller owns ``redis``."""

    def __init__(
        self,
        redis: Redis,
        config: PromptRegistryConfig | None = None,
        *,
        namespace: str = "alb-prompts",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or PromptRegistryConfig()
        self._redis = redis
        self._prefix = f"{{{namespace}}}:text:"
        self._index = f"{{{namespace}}}:index"
        self._script = redis.register_script(_PUT)
        self._clock = clock
        self._recent: OrderedDict[str, float] = OrderedDict()

    async def put(self, text: str) -> str:
        digest = system_prompt_hash(text)
        if len(text.encode("utf-8")) > self.config.max_text_bytes:
            return digest
        now = self._clock()
        last = self._recent.get(digest)
        if last is not None and now - last < self.config.refresh_s:
            return digest
        with _translated("put"):
            await self._put(digest, text)
        self._recent[digest] = now
        self._recent.move_to_end(digest)
        while len(self._recent) > self.config.max_entries:
            self._recent.popitem(last=False)
        return digest

    async def _put(self, digest: str, text: str) -> None:
        await self._script(
            keys=[self._index],
            args=[
                self._prefix,
                digest,
                text,
                max(1, int(self.config.ttl_s * 1000)),
                int(time.time() * 1000),
                self.config.max_entries,
            ],
        )

    async def get(self, digest: str) -> str | None:
        with _translated("get"):
            value = await self._redis.get(self._prefix + digest)
        if value is None:
            return None
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Redis's and the socket layer's failures as ``RegistryUnavailable``."""
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise RegistryUnavailable(f"the prompt registry's {what} failed: {exc!r}") from exc
