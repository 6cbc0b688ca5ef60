"""Shared helpers and the ``Target`` type for the contract suite (see conftest.py)."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

#: Names of the two models in the simulated fleet (tags deliberately left off:
#: the suite must normalise names the way Ollama does).
SIM_MODEL = "tinyllama"
SIM_EMBED_MODEL = "nomic-embed-text"

#: Time scale of the simulated fleet: 1 simulated second = 10 ms of wall time.
SIM_TIME_SCALE = 0.01

SIM_FLEET: dict[str, Any] = {
    "time_scale": SIM_TIME_SCALE,
    "version": "0.30.0",
    "gen_tokens_per_s": 200.0,
    "prefill_tokens_per_s": 400.0,
    "models": [
        {
            "name": SIM_MODEL,
            "size": "640MB",
            "context_length": 2048,
            "family": "llama",
            "parameter_size": "1.1B",
            "quantization_level": "Q4_0",
            "embedding_length": 2048,
            "block_count": 22,
            "response_tokens": 8,
        },
        {
            "name": SIM_EMBED_MODEL,
            "size": "274MB",
            "capabilities": ["embedding"],
            "context_length": 2048,
            "family": "nomic-bert",
            "parameter_size": "137M",
            "quantization_level": "F16",
            "embedding_length": 768,
            "block_count": 12,
        },
        # Only served by the "tinyqueue" daemon: big models (one fits at a time) with
        # slow loads, used to fill OLLAMA_MAX_QUEUE=1.
        *(
            {"name": f"slow-{x}", "size": "20GB", "context_length": 2048}
            for x in ("a", "b", "c", "d")
        ),
    ],
    "daemons": [
        {
            "name": "d0",
            "memory": "24GiB",
            "load_fixed_s": 3.0,
            "models": [SIM_MODEL, SIM_EMBED_MODEL],
        },
        {
            "name": "tinyqueue",
            "memory": "24GiB",
            "load_fixed_s": 60.0,
            "max_queue": 1,
            "max_loaded_models": 1,
            "models": ["slow-a", "slow-b", "slow-c", "slow-d"],
        },
    ],
}


@dataclass
class Target:
    """What a contract test talks to."""

    kind: str  # "sim" or "real"
    base_url: str
    model: str  # completion model, as the suite sends it (often without a tag)
    embed_model: str | None  # embedding-only model, or None (embed tests skip)
    supports_faults: bool  # sim-only knobs (tiny max_queue daemon, ...)
    fleet: Any = field(default=None, repr=False)  # the sim's RunningFleet, else None

    @property
    def loopback_listener(self) -> bool:
        """Whether Ollama's Host check applies (it does only on a loopback listener)."""
        host = urlsplit(self.base_url).hostname or ""
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host == "localhost"

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kw.pop("timeout", 120.0), **kw)


# --------------------------------------------------------------------------- names


def norm(name: str) -> str:
    """Ollama's ``DisplayShortest`` of ``name``: default host/namespace dropped, tag kept.

    ``tinyllama`` → ``tinyllama:latest``; comparison is case-insensitive
    (types/model/name.go ``ParseName`` / ``DisplayShortest``; server/routes.go
    ``getExistingName`` matches parts with ``strings.EqualFold``).
    Written out here, not imported from ``ollamasim.names``: it judges the names the
    simulator shows, so it must not share the simulator's code (nor its bugs).
    """
    rest = name.strip()
    tag = "latest"
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :] or "latest"
    parts = rest.split("/")
    host, namespace = "registry.ollama.ai", "library"
    if len(parts) >= 3:
        host, namespace, model = parts[-3], parts[-2], parts[-1]
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[0]
    if host.lower() != "registry.ollama.ai":
        out = f"{host}/{namespace}/{model}:{tag}"
    elif namespace.lower() != "library":
        out = f"{namespace}/{model}:{tag}"
    else:
        out = f"{model}:{tag}"
    return out.lower()


def namespace_of(name: str) -> str:
    parts = name.split(":", maxsplit=1)[0].split("/")
    return parts[-2] if len(parts) >= 2 else "library"


def parse_go_time(value: str) -> datetime:
    """Parse Go's RFC3339Nano ``time.Time`` JSON (``Z`` or ``±hh:mm``, up to 9 decimals)."""
    s = value.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    main, sep, rest = s.partition(".")
    if sep:
        n = len(rest) - len(rest.lstrip("0123456789"))
        digits, offset = rest[:n], rest[n:]
        s = f"{main}.{(digits + '000000')[:6]}{offset}"
    dt = datetime.fromisoformat(s)
    assert dt.tzinfo is not None, f"time without offset: {value!r}"
    return dt


def now_utc() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- helpers


def ps(target: Target) -> list[dict[str, Any]]:
    with target.client() as c:
        r = c.get("/api/ps")
        r.raise_for_status()
        return list(r.json()["models"])


def ps_entry(target: Target, model: str) -> dict[str, Any] | None:
    for m in ps(target):
        if norm(m["name"]) == norm(model):
            return m
    return None


def unload(target: Target, model: str) -> None:
    """Unload ``model`` and wait until ``/api/ps`` no longer lists it.

    The unload reply is immediate; the runner goes once idle (sched.go ``expireRunner``).
    """
    # /api/generate's unload branch runs before the capability check, so it works
    # for embedding-only models too (routes.go GenerateHandler).
    with target.client() as c:
        r = c.post("/api/generate", json={"model": model, "keep_alive": 0})
        assert r.status_code == 200, r.text
    wait_until(lambda: ps_entry(target, model) is None, what=f"{model} to leave /api/ps")


def unload_all(target: Target) -> None:
    for m in ps(target):
        unload(target, m["name"])


def wait_until(pred: Any, *, what: str, timeout: float = 30.0, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
