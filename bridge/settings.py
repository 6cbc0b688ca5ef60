"""The bridge's one frozen settings object (environment prefix ``ALB_``).

Parsed once at start-up by ``load_settings``; a bad value fails fast with a
message that names the variable. Nothing below the CLI reads ``os.environ``.

Daemons come from ``ALB_DAEMONS`` (``"gpu0=http://h:11434,gpu1=http://h2:11434"``;
a bare URL is named after its host and port; per-daemon parallel slots and
max-loaded as query parameters: ``gpu0=http://h:11434?parallel=2&max_loaded=3``),
else from ``OLLAMA_HOST`` in any of Ollama's forms (``host``, ``host:port``,
``http://host:port``; port 11434 by default), else ``http://127.0.0.1:11434``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


def normalise_ollama_host(value: str) -> str:
    """``OLLAMA_HOST`` forms → ``scheme://host:port`` (Ollama's ``envconfig.Host``)."""
    raw = value.strip().rstrip("/")
    if not raw:
        return DEFAULT_OLLAMA
    scheme = "http"
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
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
    return f"{scheme}://{host}:{port}"


class Settings(BaseSettings):
    """Every knob of ``alb serve``; see docs/bridge.md for the table."""

    model_config = SettingsConfigDict(env_prefix="ALB_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
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

    keep_alive_policy: Literal["bridge", "honour"] = "bridge"
    #: ``bridge`` policy: unload a model idle this long (seconds; 0 = never).
    idle_unload_after: float = Field(1800.0, ge=0)
    keep_alive_min: float = Field(0.0, ge=0)
    keep_alive_max: float = Field(86400.0, ge=0)

    heartbeat_interval: float = Field(5.0, gt=0)
    drain_timeout: float = Field(30.0, ge=0)
    refresh_interval: float = Field(5.0, gt=0)
    tags_ttl: float = Field(10.0, gt=0)

    allow_store_changes: bool = False
    #: ``make run``: start a simulated fleet when nothing answers at the default host.
    sim_fallback: bool = False
    sim_config: str = ""

    @field_validator("ollama_host")
    @classmethod
    def _ollama_host(cls, v: str) -> str:
        return normalise_ollama_host(v)

    def daemon_specs(self) -> tuple[DaemonSpec, ...]:
        """The upstream daemons, parsed from ``daemons`` or ``ollama_host``."""
        return parse_daemons(self.daemons or self.ollama_host, self.parallel, self.max_loaded)

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
        base = normalise_ollama_host(url.split("?", 1)[0])
        query = parse_qs(urlsplit(url).query)
        par = _int_param(query, "parallel", parallel)
        mx = _int_param(query, "max_loaded", max_loaded)
        name = name.strip() or base.split("://", 1)[1]
        specs.append(DaemonSpec(name, base, par, mx))
    if not specs:
        raise SettingsError("ALB_DAEMONS: no daemon given")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SettingsError(f"ALB_DAEMONS: duplicate daemon names in {text!r}")
    return tuple(specs)


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
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        raise SettingsError(f"ALB_{field.upper()}: {err['msg']}") from None
    if settings.keep_alive_min > settings.keep_alive_max:
        raise SettingsError("ALB_KEEP_ALIVE_MIN: must not exceed ALB_KEEP_ALIVE_MAX")
    return settings


def _known(values: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in values.items() if k in Settings.model_fields}
