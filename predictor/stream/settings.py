"""``PredictorSettings``: the one frozen settings object of ``alb predictor``.

Environment variables with the prefix ``ALB_PREDICTOR_``, parsed once at start-up;
a bad value fails fast with a message naming the variable (:func:`load_settings`).
The core's knobs pass through unchanged as ``ALB_PREDICTOR_CONFIG`` (a JSON object of
:class:`~predictor.core.config.PredictorConfig` fields) or one by one as
``ALB_PREDICTOR_CONFIG__<FIELD>`` (e.g. ``ALB_PREDICTOR_CONFIG__WINDOW_MINUTES=5``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field, TypeAdapter, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.messages import Topic
from ingest.topics import TOPICS
from predictor.core.config import ConfigError, PredictorConfig

__all__ = ["PredictorSettings", "SettingsError", "load_settings", "split_servers"]

PREFIX = "ALB_PREDICTOR_"
_ACCESS_LOG_PARTITIONS = next(s.partitions for s in TOPICS if s.name == Topic.ACCESS_LOG.value)


class SettingsError(ValueError):
    """A configuration value is wrong; the message names the variable."""


class PredictorSettings(BaseSettings):
    """Every knob of the Faust predictor (``alb predictor``)."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated ``host:port``."""
    preflight_timeout_s: float = Field(10.0, gt=0)
    """How long the start-up check waits for a bootstrap server to answer as Kafka
    before ``alb predictor`` exits 2 (:mod:`predictor.stream.preflight`)."""
    app_id: str = "alb-predictor"
    """Faust app id: the consumer group and the prefix of its internal topics."""
    store: str = "rocksdb://"
    """Table store: ``rocksdb://`` (rocksdict; local state survives restarts and only
    the changelog's tail is replayed) or ``memory://`` (tests; state rebuilt from the
    changelogs at every start)."""
    datadir: Path = Path(".alb-predictor")
    producer: str = "alb-predictor"
    """The ``producer`` field of the events it publishes."""
    access_log_topic: str = Topic.ACCESS_LOG.value
    model_state_topic: str = Topic.MODEL_STATE.value
    prefetch_topic: str = Topic.PREFETCH.value
    warm_cache_topic: str = Topic.WARM_CACHE.value
    model_hints_topic: str = Topic.MODEL_HINTS.value
    model_hints_ttl_s: float = Field(30.0, ge=0)
    """Every tick publishes a hint per model (``alb.model-hints.v1``: P(reuse) and the
    keep-alive, for bridges running with Kafka), valid this long; 0: publish none."""
    access_log_partitions: int = Field(_ACCESS_LOG_PARTITIONS, ge=1)
    """Must equal the access log's partition count: the session table is co-partitioned
    with it (Faust refuses to start otherwise)."""
    replication_factor: int = Field(1, ge=1)
    """Of the internal topics (observations, changelogs); 3 on a production cluster."""
    tick_interval_s: float = Field(5.0, gt=0)
    """How often the leader sends a tick (window expiry, histogram pre-warms)."""
    batch_max: int = Field(500, ge=1)
    batch_s: float = Field(0.2, gt=0)
    """Records are processed in batches of at most ``batch_max`` or ``batch_s`` seconds:
    outputs are flushed, then state is written, then offsets may be committed."""
    bundle_size: int = Field(100, ge=1)
    """Observations per internal message (the bigger, the fewer Faust messages)."""
    commit_interval_s: float = Field(2.8, gt=0)
    """How often Faust commits acked offsets (its ``broker_commit_interval``)."""
    session_sweep_s: float = Field(60.0, gt=0)
    """How often each partition's expired sessions are deleted from the session table."""
    web_enabled: bool = False
    web_port: int = Field(6066, ge=0, le=65535)
    config: dict[str, Any] = Field(default_factory=dict)
    """:class:`PredictorConfig` fields (JSON); unknown names are an error."""

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        split_servers(value)
        return value

    def predictor_config(self) -> PredictorConfig:
        """The core's configuration (validated at load time by :func:`load_settings`)."""
        return _predictor_config(self.config)


def split_servers(bootstrap_servers: str) -> list[tuple[str, int]]:
    """``"h1:9092,[::1]:9093"`` as ``[("h1", 9092), ("::1", 9093)]`` (port 9092 if none);
    ``ValueError`` for a port that is not a number or an empty list."""
    out: list[tuple[str, int]] = []
    for item in bootstrap_servers.split(","):
        server = item.strip().removeprefix("kafka://")
        if not server:
            continue
        host, sep, port = server.rpartition(":")
        if not sep or "]" in port:  # no port, or an IPv6 literal without one
            host, port = server, "9092"
        if not port.isdigit() or not 0 < int(port) < 65536 or not host.strip("[]"):
            raise ValueError(f"{server!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError("no bootstrap servers")
    return out


def _predictor_config(values: Mapping[str, Any]) -> PredictorConfig:
    known = {f.name for f in dataclasses.fields(PredictorConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown predictor settings: {', '.join(unknown)}")
    # Values from single variables are strings: pydantic coerces them to the field types.
    base = PredictorConfig.recommended().to_dict()
    cfg: PredictorConfig = TypeAdapter(PredictorConfig).validate_python({**base, **values})
    return cfg


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> PredictorSettings:
    """Parse ``environ`` (default ``os.environ``) once; ``SettingsError`` names the variable."""
    env = os.environ if environ is None else environ
    try:
        values: dict[str, Any] = {}
        nested: dict[str, Any] = {}
        for key, val in env.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX) :].lower()
            if name.startswith("config__"):
                nested[name[len("config__") :]] = val
            elif name == "config":
                values[name] = _json_object(key, val)
            else:
                values[name] = val
        settings = PredictorSettings.model_validate({**values, **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        var = PREFIX + "_".join(str(p) for p in err["loc"][:1]).upper()
        raise SettingsError(f"{var}: {err['msg']}") from None
    try:
        merged = {**settings.config, **nested}
        _predictor_config(merged)
    except (ConfigError, ValidationError, TypeError) as exc:
        raise SettingsError(f"{PREFIX}CONFIG: {_message(exc)}") from None
    if nested:
        settings = settings.model_copy(update={"config": merged})
    return settings


def _json_object(var: str, text: str) -> dict[str, Any]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SettingsError(f"{var}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{var}: must be a JSON object")
    return data


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else str(err["msg"])
    return str(exc)
