"""The bridge's one frozen settings object (environment prefix ``ALB_``).

Parsed once at start-up by ``load_settings``; a bad value fails fast with a
message that names the variable. Nothing below the CLI reads ``os.environ``.

Daemons come from ``ALB_DAEMONS`` (``"gpu0=http://h:11434,gpu1=http://h2:11434"``;
a bare URL is named after its host and port; per-daemon parallel slots and
max-loaded as query parameters: ``gpu0=http://h:11434?parallel=2&max_loaded=3``;
memory capacity and co-location likewise: ``?memory=24GiB&local=1``; the daemon's
default context: ``?default_ctx=4096``),
else from ``OLLAMA_HOST`` in any of Ollama's forms (``host``, ``host:port``,
``http://host:port``; port 11434 by default), else ``http://127.0.0.1:11434``.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.policy.access import check_networks, check_origins
from bridge.wire import names
from predictor.core.config import PredictorConfig

DEFAULT_OLLAMA = "http://127.0.0.1:11434"
_OLLAMA_PORT = 11434


class SettingsError(ValueError):
    """A configuration value is wrong; the message names the variable."""


@dataclass(frozen=True, slots=True)
class DaemonSpec:
    """One upstream Ollama daemon."""

    name: str
    url: str
    parallel: int
    max_loaded: int
    #: Memory capacity in bytes (``?memory=24GiB`` or ``ALB_MEMORY``); None = unknown.
    memory: int | None = None
    #: The daemon runs beside the bridge: its capacity is read through NVML.
    local: bool = False
    #: The daemon's default num_ctx (its ``OLLAMA_CONTEXT_LENGTH``, else Ollama's VRAM
    #: tier): ``?default_ctx=4096`` or ``ALB_DEFAULT_NUM_CTX``; None = learn it.
    default_ctx: int | None = None
    #: ``Basic …`` from credentials in the URL (``http://user:pass@host``), which ``url``
    #: never holds: only the upstream client sends it, nothing shows it.
    authorization: str | None = field(default=None, repr=False)

    @property
    def shown_url(self) -> str:
        """The URL as operators see it: credentials, when configured, as ``***``."""
        if self.authorization is None:
            return self.url
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://***@{rest}"


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes from ``"24GiB"`` (2**30), ``"24GB"`` (10**9) or a plain number of bytes."""
    m = _SIZE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise SettingsError(f"invalid size {text!r}: use bytes or a string like '24GiB'")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def split_userinfo(value: str) -> tuple[str, str | None]:
    """``http://user:pass@host:1`` -> ``("http://host:1", "Basic dXNlcjpwYXNz")``; the
    credentials are percent-decoded, as in a URL."""
    scheme, sep, rest = value.strip().rpartition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return value, None
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return f"{scheme}{sep}{hostport}{slash}{tail}", f"Basic {token}"


def normalise_ollama_host(value: str) -> str:
    """``OLLAMA_HOST`` forms → ``scheme://host:port`` (Ollama's ``envconfig.Host``)."""
    raw = value.strip().rstrip("/")
    if not raw:
        return DEFAULT_OLLAMA
    scheme = "http"
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
    userinfo, at, raw = raw.rpartition("@")  # kept as given: ``parse_daemons`` takes it
    host, port = raw, ""
    if raw.startswith("["):
        end = raw.find("]")
        host, rest = raw[: end + 1], raw[end + 1 :]
        port = rest.removeprefix(":")
    elif raw.count(":") == 1:
        host, port = raw.split(":", 1)
    port = port or (str(443) if scheme == "https" else str(_OLLAMA_PORT))
    if host in ("", "0.0.0.0"):  # a listen address; talk to loopback
        host = "127.0.0.1"
    if not port.isdigit():
        raise SettingsError(f"OLLAMA_HOST: invalid port in {value!r}")
    return f"{scheme}://{userinfo}{at}{host}:{port}"


def _parse_caps(text: str) -> dict[str, int]:
    """``ALB_REPLICA_CAPS``: ``model=N`` items, comma-separated, N >= 1."""
    caps: dict[str, int] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        model, _, count = item.rpartition("=")
        if not model or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{item!r} is not model=N with N >= 1")
        caps[names.key(model)] = int(count)
    return caps


class Settings(BaseSettings):
    """Every knob of ``alb serve``; the README's "Configuration" has the table."""

    model_config = SettingsConfigDict(env_prefix="ALB_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: Worker processes of ``alb serve`` on one port (SO_REUSEPORT), each a replica;
    #: more than one needs ``ALB_REDIS_URL``.
    workers: int = Field(1, ge=1, le=64)
    #: Set by ``alb serve --workers`` for each worker: its index, and that it binds
    #: the port with SO_REUSEPORT beside the others.
    worker_index: int = Field(-1, ge=-1, le=63)
    #: ``name=url[?parallel=N&max_loaded=M]`` comma-separated; empty: OLLAMA_HOST.
    daemons: str = ""
    #: Where ``daemons`` fell back to when ALB_DAEMONS is empty (set by load_settings).
    ollama_host: str = DEFAULT_OLLAMA
    #: Slots per loaded model on a daemon (match OLLAMA_NUM_PARALLEL).
    parallel: int = Field(1, ge=1, le=256)
    #: Models a daemon may hold (match OLLAMA_MAX_LOADED_MODELS; 3 = Ollama's auto on 1 GPU).
    max_loaded: int = Field(3, ge=1, le=256)

    connect_timeout: float = Field(5.0, gt=0)
    #: Longest silence between two upstream chunks (or before the first byte).
    read_timeout: float = Field(300.0, gt=0)
    #: Overall deadline of one proxied request, queueing and loading included.
    request_timeout: float = Field(1800.0, gt=0)
    load_timeout: float = Field(600.0, gt=0)
    #: Retries of one upstream request before its first byte reached the client.
    upstream_retries: int = Field(2, ge=0, le=10)
    max_connections: int = Field(512, ge=1)

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    queue_capacity: int = Field(256, ge=1)
    high_water: float = Field(0.8, gt=0, le=1)
    #: The longest ``Retry-After`` a refusal at the high-water mark gives, seconds: the
    #: ``openai`` client does not wait for one past two minutes, it gives up at once.
    retry_after_max: float = Field(120.0, ge=1, le=3600)

    keep_alive_policy: Literal["bridge", "honour"] = "bridge"
    #: ``bridge`` policy, when idle memory is given back. ``demand`` (the default): an
    #: idle runner stays loaded until a load needs its room (eviction by value) or a
    #: predicted load does (a prefetch's evictions); ``idle``: also unload it after its
    #: keep-alive (``idle_unload_after``, or the predictor's per-model keep-alive), for
    #: GPUs that are shared with other work or paid by the hour.
    reclaim: Literal["demand", "idle"] = "demand"
    #: ``idle`` reclaim: unload a model idle this long (seconds; 0 = never).
    idle_unload_after: float = Field(1800.0, ge=0)
    #: Load a copy of a hot model on another daemon when its expected queue wait is
    #: longer than a load (``bridge.policy.replicas``); requests spread over the copies.
    replication: bool = True
    #: Copies of one model at most (0: as many as there are daemons, the value rules
    #: alone decide), and per model ``model=N,model2=M`` (names as clients send them).
    replica_max: int = Field(0, ge=0, le=1024)
    replica_caps: str = ""
    #: A copy made by replication that stays idle this long while another copy of the
    #: model is loaded is unloaded (seconds).
    replica_idle: float = Field(60.0, gt=0)
    keep_alive_min: float = Field(0.0, ge=0)
    keep_alive_max: float = Field(86400.0, ge=0)

    heartbeat_interval: float = Field(5.0, gt=0)
    drain_timeout: float = Field(30.0, ge=0)
    refresh_interval: float = Field(5.0, gt=0)
    tags_ttl: float = Field(10.0, gt=0)

    # --- memory budget, placement, num_ctx (issue #4) ---------------------------
    #: Default memory capacity of a daemon without ``?memory=`` (``"24GiB"``; empty = unknown:
    #: only ``max_loaded`` is enforced for it).
    memory: str = ""
    #: The daemon running beside the bridge (its capacity comes from NVML); or ``?local=1``.
    local_daemon: str = ""
    #: Fraction of each daemon's capacity never planned for (Ollama's estimates run low).
    headroom: float = Field(0.1, ge=0, lt=1)
    #: KV-cache bytes per element: 2 for f16 (Ollama's default), 1 for q8_0, 0.5 for q4_0.
    kv_bytes_per_element: float = Field(2.0, gt=0, le=4)
    #: Context buckets a load is rounded up to (beyond the last one: doubling).
    num_ctx_buckets: str = "2048,4096,8192,16384,32768,65536,131072"
    #: Load without num_ctx (the daemon's default context) whenever that default covers
    #: the need: such a runner serves every client, /v1 included (Ollama's OpenAI surface
    #: cannot send num_ctx), without a reload. False: always the smallest bucket (less
    #: memory; /v1 requests then need a runner of their own at the default).
    num_ctx_prefer_default: bool = True
    #: Serve /v1/chat/completions and /v1/completions through the native API (with the
    #: runner's num_ctx) when the model's runner is at another context that fits them,
    #: instead of reloading it at the default (``bridge.wire.openai_native``).
    openai_native: bool = True
    #: The daemons' default num_ctx (their ``OLLAMA_CONTEXT_LENGTH``) for daemons without
    #: ``?default_ctx=``; 0 = learn it from the first runner loaded without num_ctx
    #: (until then: Ollama's VRAM tier for the daemon's capacity).
    default_num_ctx: int = Field(0, ge=0)
    #: Bounds on a client-supplied ``num_ctx`` (clamped into them).
    num_ctx_min: int = Field(2048, ge=4)
    num_ctx_max: int = Field(262144, ge=4)
    #: Tokens reserved for the answer when the request sets no ``num_predict``/``max_tokens``.
    num_predict_default: int = Field(512, ge=0)
    #: Tokens one image counts for in the context estimate.
    image_tokens: int = Field(768, ge=0)
    #: Characters per token before a model's ratio is calibrated from ``prompt_eval_count``.
    chars_per_token: float = Field(3.5, gt=0.5, le=16)
    #: ``strip``: drop num_batch/num_gpu/main_gpu/use_mmap/num_thread from clients' options
    #: (they would force reloads); ``forward``: pass them on unchanged.
    runner_options: Literal["strip", "forward"] = "strip"
    #: Models never evicted: ``model`` or ``model@daemon``, comma-separated; loaded at start.
    pinned: str = ""
    #: Admin routes (``/alb/v1/models/{m}/load|unload|pin|unpin``) need this bearer token;
    #: unset: they answer only loopback clients.
    admin_token: SecretStr | None = None
    # --- keys, scopes and limits (issue #16) --------------------------------------------
    #: ``keys``: every route but /healthz, /readyz and /metrics needs an API key (``alb
    #: keys create``) with the route's scope; ``none``: no keys (loopback only, unless
    #: ``ALB_ALLOW_OPEN``).
    auth: Literal["none", "keys"] = "none"
    #: Acknowledge a bridge without keys on a non-loopback address (else it refuses to start).
    allow_open: bool = False
    #: TLS by uvicorn itself: a PEM certificate (chain) and its key (empty: plain HTTP).
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    #: The embedded key store (SQLite); empty: ``$XDG_STATE_HOME/alb/keys.sqlite``. With
    #: ``ALB_REDIS_URL`` the keys live in Redis instead.
    keys_file: str = ""
    #: The HMAC key of the stored key digests (the same on every replica and for ``alb
    #: keys``); unset: a fixed domain key.
    keys_pepper: SecretStr | None = None
    #: Seconds between polls of the key store's version: the bound on how long a revoked
    #: or rotated key still works on a replica.
    keys_refresh: float = Field(1.0, gt=0, le=300)
    #: Output tokens a request reserves against tokens-per-minute and the daily budget
    #: when it names no smaller cap (``max_tokens``, ``num_predict``); settled afterwards.
    keys_output_reserve: int = Field(256, ge=0)
    #: Keys named in per-key metrics labels; later keys are counted as ``other``.
    keys_metrics_max: int = Field(100, ge=0)
    #: Active health checks (a one-token generate on a loaded model, else /api/version).
    health_interval: float = Field(10.0, gt=0)
    health_timeout: float = Field(10.0, gt=0)
    #: Consecutive failures that open a daemon's circuit; seconds before a half-open probe.
    breaker_failures: int = Field(3, ge=1)
    breaker_cooldown: float = Field(10.0, gt=0)
    # --- failed loads teach placement (issue #12, finding 8) -----------------------------
    #: Seconds a (daemon, model) whose load timed out or failed gets no load of the model
    #: (others take it; alone, 503 + Retry-After); doubled per consecutive failure.
    load_failure_cooldown: float = Field(30.0, gt=0)
    #: The longest that cooldown grows to.
    load_failure_cooldown_max: float = Field(600.0, gt=0)
    #: Decision records kept in memory (``GET /alb/v1/decisions``).
    decisions_capacity: int = Field(2048, ge=1)

    # --- events (issue #5) -----------------------------------------------------------
    #: Produce access-log, model-state and decision events (``false``: none at all).
    events: bool = True
    #: Kafka bootstrap servers (``host:port,...``); empty: the embedded in-process bus.
    kafka_bootstrap_servers: str = ""
    #: Create the bridge's topics on Kafka at start-up (in the background; Kafka may be down).
    kafka_create_topics: bool = True
    #: The disk spool the sender spills to while Kafka is down or slow. Empty: a per-process
    #: temporary directory for the embedded bus; ``$XDG_STATE_HOME/alb/spool/<producer>``
    #: (``~/.local/state/...``) with Kafka, so a restart resends what was left.
    events_spool_dir: str = ""
    #: The spool's bound on disk; past it, events are dropped (counted and logged).
    events_spool_max: str = "1GiB"
    #: Events held in memory before they spill to the spool.
    events_queue_max: int = Field(10_000, ge=1)
    #: With Kafka: build and send the events in a child process (``python -m
    #: bridge.events.shipper``), off the bridge's event loop; ``false``: in the event loop.
    events_shipper: bool = True
    #: Seconds the sender gets at shutdown to hand its queue to the bus (the rest is spooled).
    events_close_timeout: float = Field(5.0, ge=0)
    #: ``redis://`` URL shared by replicas: the daemons' leases, the cold-load claims and
    #: the system-prompt registry (``bridge.coord.shared``); unset: one replica, in memory.
    redis_url: SecretStr | None = None
    #: Seconds a daemon's lease lasts unless its owner renews it (every third of it): how
    #: long a dead owner's daemons wait for a new owner.
    lease_ttl: float = Field(5.0, ge=0.3, le=600)
    #: Seconds every Redis call of the coordination may take before it counts as failed.
    redis_timeout: float = Field(0.1, gt=0, le=10)
    #: Prefix of the coordination's Redis keys (replicas of one fleet share it).
    coord_namespace: str = Field("alb", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: This replica's name in leases and records; empty: ``host-pid-random``.
    replica_id: str = Field("", max_length=128, pattern=r"^[A-Za-z0-9_.:-]*$")
    #: ``producer`` of every event; empty: ``alb-bridge/<version> <hostname>:<port>``.
    producer_id: str = ""
    #: The consumer group reading prefetch and warm-cache events.
    consumer_group: str = Field("alb-bridge", min_length=1)
    #: Act on prefetch / warm-cache events at all.
    prefetch: bool = True
    #: Prefetch loads per second (token bucket) and the bucket's size.
    prefetch_rate: float = Field(0.5, gt=0)
    prefetch_burst: int = Field(3, ge=1)
    #: Share of a daemon's memory budget that prefetched, not yet used runners may hold.
    prefetch_budget: float = Field(0.5, ge=0, le=1)
    #: Warm-cache generations per second (token bucket) and the bucket's size.
    warm_rate: float = Field(2.0, gt=0)
    warm_burst: int = Field(5, ge=1)
    #: Event ids remembered for idempotence (prefetch and warm-cache).
    events_seen_capacity: int = Field(100_000, ge=1)
    #: Run the predictor inside the bridge over the in-process bus when Kafka is not
    #: configured (``bridge.events.predictor``); with Kafka the Faust worker (``alb predictor``)
    #: does that job.
    predictor_embedded: bool = True
    #: With Kafka: read the Faust worker's model hints (``alb.model-hints.v1``) into the
    #: eviction value and the idle unloads, as the embedded predictor's state is used
    #: without Kafka (``bridge.events.hints``); ``false``: recency and ``ALB_IDLE_UNLOAD_AFTER``.
    model_hints: bool = True
    #: The embedded predictor's core knobs: a JSON object of ``PredictorConfig`` fields,
    #: the same variable ``alb predictor`` reads (``ALB_PREDICTOR_CONFIG``).
    predictor_config: str = ""
    #: How often the embedded predictor ticks (window expiry, pre-warms, reuse hints).
    predictor_tick_interval_s: float = Field(5.0, gt=0)

    allow_store_changes: bool = False
    #: ``make run``: start a simulated fleet when nothing answers at the default host.
    sim_fallback: bool = False
    sim_config: str = ""

    # --- the edge: Host/Origin checks, client connection and body limits (issue #12) ------
    #: Extra allowed browser origins, comma-separated, one ``*`` wildcard each (as
    #: ``OLLAMA_ORIGINS``; ``*`` alone: any). Ollama's defaults are always allowed.
    origins: str = ""
    #: Extra ``Host`` names accepted while listening on loopback, comma-separated
    #: (``bridge.example.com``, ``*.corp.example``); ``*``: no Host check at all.
    allowed_hosts: str = ""
    #: Peers (IPs or CIDRs, comma-separated) whose ``X-Forwarded-For`` names the client;
    #: empty: it is never read (uvicorn's FORWARDED_ALLOW_IPS is not used).
    trusted_proxies: str = ""
    #: Seconds a connection gets to send a whole request head (from accept, or from the
    #: first byte of a keep-alive request); then it is closed.
    header_timeout: float = Field(10.0, gt=0)
    #: Seconds an idle keep-alive connection is kept between requests.
    idle_timeout: float = Field(5.0, gt=0)
    #: A request body must arrive at this average rate (bytes/s) once the grace is over.
    body_min_rate: int = Field(64 * 1024, ge=0)
    body_grace: float = Field(5.0, ge=0)
    #: Open client connections; past it a new one gets a 503 (and at most 1 s to say what).
    max_client_connections: int = Field(2048, ge=1)
    #: Bytes of one request head (request line and headers); past it, 431 and close.
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    #: Request-body bytes all requests in progress may hold together; past it, 503.
    body_budget_bytes: int = Field(256 * 1024 * 1024, ge=1024)

    @field_validator("origins")
    @classmethod
    def _origins(cls, v: str) -> str:
        return check_origins(v)

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, v: str) -> str:
        return check_networks(v)

    @field_validator("ollama_host")
    @classmethod
    def _ollama_host(cls, v: str) -> str:
        return normalise_ollama_host(v)

    @field_validator("replica_caps")
    @classmethod
    def _replica_caps(cls, v: str) -> str:
        _parse_caps(v)
        return v

    def daemon_specs(self) -> tuple[DaemonSpec, ...]:
        """The upstream daemons, parsed from ``daemons`` or ``ollama_host``."""
        specs = parse_daemons(self.daemons or self.ollama_host, self.parallel, self.max_loaded)
        try:
            default_memory = parse_size(self.memory) if self.memory else None
        except SettingsError as exc:
            raise SettingsError(f"ALB_MEMORY: {exc}") from None
        out = []
        for s in specs:
            memory = s.memory if s.memory is not None else default_memory
            local = s.local or s.name == self.local_daemon
            default_ctx = s.default_ctx or self.default_num_ctx or None
            out.append(dataclasses.replace(s, memory=memory, local=local, default_ctx=default_ctx))
        return tuple(out)

    def replica_cap(self, key: str) -> int:
        """Copies of model ``key`` allowed at most (``replica_caps``, else ``replica_max``;
        0: no cap but the number of daemons)."""
        return _parse_caps(self.replica_caps).get(key, self.replica_max)

    def bucket_list(self) -> tuple[int, ...]:
        """``num_ctx_buckets`` parsed, sorted."""
        return parse_buckets(self.num_ctx_buckets)

    def spool_max_bytes(self) -> int:
        """``events_spool_max`` in bytes."""
        try:
            return parse_size(self.events_spool_max)
        except SettingsError as exc:
            raise SettingsError(f"ALB_EVENTS_SPOOL_MAX: {exc}") from None

    def predictor_core_config(self) -> PredictorConfig:
        """``predictor_config`` parsed over ``PredictorConfig.recommended()``."""
        if not self.predictor_config.strip():
            return PredictorConfig.recommended()
        try:
            data = json.loads(self.predictor_config)
        except ValueError as exc:
            raise SettingsError(f"ALB_PREDICTOR_CONFIG: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SettingsError("ALB_PREDICTOR_CONFIG: must be a JSON object")
        try:
            return PredictorConfig.with_overrides(data)
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"ALB_PREDICTOR_CONFIG: {exc}") from None

    def pins(self) -> tuple[tuple[str, str | None], ...]:
        """``(model, daemon or None)`` from ``pinned``."""
        out = []
        for item in (p.strip() for p in self.pinned.split(",")):
            if item:
                model, _, daemon = item.partition("@")
                out.append((model.strip(), daemon.strip() or None))
        return tuple(out)

    @property
    def high_water_depth(self) -> int:
        """Queue depth at which new requests for a model are refused."""
        return max(1, int(self.queue_capacity * self.high_water))


def parse_daemons(text: str, parallel: int, max_loaded: int) -> tuple[DaemonSpec, ...]:
    specs: list[DaemonSpec] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, _, url = item.partition("=") if "=" in item.split("://")[0] else ("", "", item)
        bare, authorization = split_userinfo(url.split("?", 1)[0])
        base = normalise_ollama_host(bare)
        query = parse_qs(urlsplit(url).query)
        par = _int_param(query, "parallel", parallel)
        mx = _int_param(query, "max_loaded", max_loaded)
        try:
            memory = parse_size(query["memory"][0]) if query.get("memory") else None
        except SettingsError as exc:
            raise SettingsError(f"ALB_DAEMONS: {exc}") from None
        local = (query.get("local") or ["0"])[0].lower() in ("1", "true", "yes")
        default_ctx = _int_param(query, "default_ctx", 0) or None
        name = name.strip() or base.split("://", 1)[1]
        specs.append(DaemonSpec(name, base, par, mx, memory, local, default_ctx, authorization))
    if not specs:
        raise SettingsError("ALB_DAEMONS: no daemon given")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SettingsError(f"ALB_DAEMONS: duplicate daemon names in {text!r}")
    return tuple(specs)


def parse_buckets(text: str) -> tuple[int, ...]:
    try:
        values = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise SettingsError(f"ALB_NUM_CTX_BUCKETS: integers expected, got {text!r}") from None
    if not values or values[0] < 4:
        raise SettingsError("ALB_NUM_CTX_BUCKETS: give at least one bucket of 4 tokens or more")
    return tuple(values)


def _int_param(query: Mapping[str, list[str]], key: str, default: int) -> int:
    values = query.get(key)
    if not values:
        return default
    if not values[0].isdigit() or int(values[0]) < 1:
        raise SettingsError(f"ALB_DAEMONS: {key} must be a positive integer, got {values[0]!r}")
    return int(values[0])


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Parse the environment once; raise ``SettingsError`` naming the variable."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, object] = {}
    for key, val in env.items():
        if key.startswith("ALB_"):
            values[key[4:].lower()] = val
    if "OLLAMA_HOST" in env and "ollama_host" not in values:
        values["ollama_host"] = normalise_ollama_host(env["OLLAMA_HOST"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = Settings.model_validate(_known(values))
        settings.daemon_specs()
        settings.bucket_list()
        settings.spool_max_bytes()
        settings.predictor_core_config()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        raise SettingsError(f"ALB_{field.upper()}: {err['msg']}") from None
    if settings.auth == "none" and not settings.allow_open and not _loopback_host(settings.host):
        raise SettingsError(
            f"ALB_AUTH: listening on {settings.host} (not loopback) without keys would open the "
            "bridge to the network: set ALB_AUTH=keys (and create keys with `alb keys create`), "
            "or ALB_ALLOW_OPEN=true to accept an open bridge"
        )
    if settings.keep_alive_min > settings.keep_alive_max:
        raise SettingsError("ALB_KEEP_ALIVE_MIN: must not exceed ALB_KEEP_ALIVE_MAX")
    if settings.num_ctx_min > settings.num_ctx_max:
        raise SettingsError("ALB_NUM_CTX_MIN: must not exceed ALB_NUM_CTX_MAX")
    names = {s.name for s in settings.daemon_specs()}
    if settings.local_daemon and settings.local_daemon not in names:
        raise SettingsError(f"ALB_LOCAL_DAEMON: no daemon named {settings.local_daemon!r}")
    for model, daemon in settings.pins():
        if daemon is not None and daemon not in names:
            raise SettingsError(f"ALB_PINNED: {model}@{daemon} names no configured daemon")
    return settings


def _loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _known(values: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in values.items() if k in Settings.model_fields}
