"""Where keys live: one seam (``KeyStore``), two implementations with one contract test
(``tests/bridge/tenancy/test_store.py``).

* ``SqliteKeys``: the embedded default, one SQLite file (``ALB_KEYS_FILE``, else
  ``$XDG_STATE_HOME/alb/keys.sqlite``, created 0600). ``alb keys`` writes it while the
  bridge runs; WAL mode lets both at once.
* ``RedisKeys``: distributed mode (``ALB_REDIS_URL``): a hash ``<ns>:keys`` (id ->
  record JSON), a counter ``<ns>:keys:version`` bumped in the same transaction as
  every change, and per-day usage hashes ``<ns>:usage:<YYYY-MM-DD>`` (kept 40 days).

Every change bumps the version; replicas poll it (``bridge.tenancy.keyring``) and
reload the whole set when it moved, so no lookup on the request path touches the
store. Usage rows (requests, prompt and output tokens per key and UTC day) are added
in batches by ``bridge.tenancy.quotas`` and read by ``alb keys usage``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import orjson
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridge.policy.keys import KeyRecord

_USAGE_TTL_S = 40 * 86400
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Usage:
    """What one key used on one UTC day."""

    day: str
    key_id: str
    requests: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0


class KeyStore(Protocol):
    async def put(self, record: KeyRecord) -> None:
        """Create or replace ``record`` (and bump the version)."""

    async def get(self, key_id: str) -> KeyRecord | None: ...

    async def all(self) -> list[KeyRecord]: ...

    async def version(self) -> int:
        """A number that changes with every ``put``."""

    async def add_usage(self, rows: Sequence[Usage]) -> None:
        """Add ``rows`` to the per-day totals."""

    async def usage(self, days: Sequence[str]) -> list[Usage]:
        """The totals of ``days`` (``YYYY-MM-DD``), one row per key and day used."""

    async def aclose(self) -> None: ...


def default_keys_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "alb" / "keys.sqlite"


class SqliteKeys:
    """``KeyStore`` in one SQLite file; each call opens its own connection in a thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        if not self._ready:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(
                """
                CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, doc BLOB NOT NULL);
                CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER);
                INSERT OR IGNORE INTO meta VALUES ('version', 0);
                CREATE TABLE IF NOT EXISTS usage (
                    day TEXT, key_id TEXT, requests INTEGER, prompt INTEGER, output INTEGER,
                    PRIMARY KEY (day, key_id));
                """
            )
            self._ready = True
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            conn = self._connect()
            try:
                return fn(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(call)

    async def put(self, record: KeyRecord) -> None:
        doc = orjson.dumps(record.to_json())

        def put(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT OR REPLACE INTO keys VALUES (?, ?)", (record.id, doc))
                conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'")

        await self._run(put)

    async def get(self, key_id: str) -> KeyRecord | None:
        def get(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT doc FROM keys WHERE id = ?", (key_id,)).fetchone()
            return None if row is None else bytes(row[0])

        doc = await self._run(get)
        return None if doc is None else KeyRecord.from_json(orjson.loads(doc))

    async def all(self) -> list[KeyRecord]:
        def rows(conn: sqlite3.Connection) -> list[bytes]:
            return [bytes(r[0]) for r in conn.execute("SELECT doc FROM keys ORDER BY id")]

        return [KeyRecord.from_json(orjson.loads(d)) for d in await self._run(rows)]

    async def version(self) -> int:
        def version(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()
            return int(row[0])

        return await self._run(version)

    async def add_usage(self, rows: Sequence[Usage]) -> None:
        if not rows:
            return

        def add(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO usage VALUES (?, ?, ?, ?, ?) ON CONFLICT (day, key_id) DO UPDATE"
                    " SET requests = requests + excluded.requests,"
                    " prompt = prompt + excluded.prompt, output = output + excluded.output",
                    [(u.day, u.key_id, u.requests, u.prompt_tokens, u.output_tokens) for u in rows],
                )

        await self._run(add)

    async def usage(self, days: Sequence[str]) -> list[Usage]:
        wanted = list(days)

        def read(conn: sqlite3.Connection) -> list[Usage]:
            marks = ",".join("?" * len(wanted))
            cur = conn.execute(
                f"SELECT day, key_id, requests, prompt, output FROM usage WHERE day IN ({marks})"
                " ORDER BY day, key_id",
                wanted,
            )
            return [Usage(d, k, int(r), int(p), int(o)) for d, k, r, p, o in cur]

        return await self._run(read) if wanted else []

    async def aclose(self) -> None:
        return None


class RedisKeys:
    """``KeyStore`` in Redis (module doc); every call bounded by ``timeout``."""

    def __init__(self, url: str, *, namespace: str = "alb", timeout: float = 0.1) -> None:
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._keys = f"{namespace}:keys"
        self._version = f"{namespace}:keys:version"
        self._usage = f"{namespace}:usage:"

    async def put(self, record: KeyRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys, record.id, orjson.dumps(record.to_json()))
            pipe.incr(self._version)
            await pipe.execute()

    async def get(self, key_id: str) -> KeyRecord | None:
        doc = await self._redis.hget(self._keys, key_id)
        return None if doc is None else KeyRecord.from_json(orjson.loads(doc))

    async def all(self) -> list[KeyRecord]:
        docs = await self._redis.hgetall(self._keys)
        records = [KeyRecord.from_json(orjson.loads(d)) for d in docs.values()]
        return sorted(records, key=lambda r: r.id)

    async def version(self) -> int:
        value = await self._redis.get(self._version)
        return int(value or 0)

    async def add_usage(self, rows: Sequence[Usage]) -> None:
        if not rows:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for u in rows:
                name = self._usage + u.day
                pipe.hincrby(name, f"{u.key_id}:requests", u.requests)
                pipe.hincrby(name, f"{u.key_id}:prompt", u.prompt_tokens)
                pipe.hincrby(name, f"{u.key_id}:output", u.output_tokens)
                pipe.expire(name, _USAGE_TTL_S)
            await pipe.execute()

    async def usage(self, days: Sequence[str]) -> list[Usage]:
        out: list[Usage] = []
        for day in days:
            fields = await self._redis.hgetall(self._usage + day)
            totals: dict[str, dict[str, int]] = {}
            for name, value in fields.items():
                text = name.decode() if isinstance(name, bytes) else str(name)
                key_id, _, kind = text.rpartition(":")
                totals.setdefault(key_id, {})[kind] = int(value)
            for key_id in sorted(totals):
                t = totals[key_id]
                out.append(
                    Usage(day, key_id, t.get("requests", 0), t.get("prompt", 0), t.get("output", 0))
                )
        return out

    async def aclose(self) -> None:
        await self._redis.aclose()
