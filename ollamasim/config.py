"""Fleet file: the simulated daemons and the models they serve.

Everything here is parsed once at start-up (pydantic, frozen). Sizes accept
plain integers (bytes) or strings such as ``"24GB"`` (10**9) and ``"24GiB"``
(2**30); durations such as ``keep_alive`` accept Go duration strings (``"5m"``)
or a number of seconds, exactly like ``OLLAMA_KEEP_ALIVE``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ollamasim.names import normalize

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any) -> int:
    """Bytes from an int or a string like ``"4.7GB"`` / ``"24GiB"``."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '24GiB'")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"invalid size {value!r}: use bytes or a string like '24GiB' / '24GB'")


ByteSize = Annotated[int, BeforeValidator(parse_size)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(_Frozen):
    """One model in the fleet's model store."""

    name: str
    size: ByteSize
    capabilities: tuple[str, ...] = ("completion",)
    context_length: int = 8192
    family: str = "llama"
    families: tuple[str, ...] | None = None
    parameter_size: str = "8.0B"
    quantization_level: str = "Q4_K_M"
    format: str = "gguf"
    digest: str | None = None
    embedding_length: int = 4096
    block_count: int = 32
    head_count: int = 32
    head_count_kv: int = 8
    #: PARAMETER num_ctx baked into the model (Modelfile); None = server default.
    num_ctx: int | None = None
    #: KV-cache bytes per context token (all layers); runner size grows with num_ctx.
    kv_bytes_per_token: ByteSize = 131072
    gen_tokens_per_s: float | None = None
    prefill_tokens_per_s: float | None = None
    #: Tokens generated when the request sets no num_predict.
    response_tokens: int = 24
    template: str = "{{ .Prompt }}"
    system: str = ""
    license: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    modified_at: str = "2025-01-01T00:00:00Z"

    @property
    def key(self) -> str:
        return normalize(self.name)

    @property
    def sha256(self) -> str:
        if self.digest:
            return self.digest.removeprefix("sha256:")
        return hashlib.sha256(self.key.encode()).hexdigest()

    @property
    def blob_sha256(self) -> str:
        return hashlib.sha256(("blob:" + self.key).encode()).hexdigest()

    @property
    def is_embedding_only(self) -> bool:
        return "completion" not in self.capabilities

    @property
    def all_families(self) -> list[str]:
        return list(self.families) if self.families is not None else [self.family]


class DaemonConfig(_Frozen):
    """One simulated ``ollama serve`` process."""

    name: str
    port: int = 0
    #: Total accelerator memory (VRAM) available to runners.
    memory: ByteSize = 24 * 1024**3
    load_bandwidth: ByteSize = 2 * 1024**3  # bytes per simulated second
    load_fixed_s: float = 1.0
    num_parallel: int = 1  # OLLAMA_NUM_PARALLEL
    max_queue: int = 512  # OLLAMA_MAX_QUEUE
    max_loaded_models: int = 0  # OLLAMA_MAX_LOADED_MODELS; 0 = 3 per GPU (one GPU)
    keep_alive: str | float = "5m"  # OLLAMA_KEEP_ALIVE
    context_length: int = 0  # OLLAMA_CONTEXT_LENGTH; 0 = VRAM-tier default
    #: Seconds an unloaded runner stays in /api/ps, its memory still held, as on a GPU
    #: while Ollama measures the VRAM before it lets the runner go (seen on an H100:
    #: docs/real-ollama.md); requests for it wait until it has gone. 0: gone at once
    #: (a CPU daemon).
    unload_linger_s: float = Field(default=0.0, ge=0)
    models: tuple[str, ...] | None = None  # default: every fleet model

    @property
    def max_runners(self) -> int:
        return self.max_loaded_models if self.max_loaded_models > 0 else 3


class FleetConfig(_Frozen):
    """The whole fleet file."""

    time_scale: float = 1.0
    # Events each daemon keeps for /_sim/events (newest first to go: the oldest);
    # 0 keeps all. Bounded so a long-running sim does not grow without limit.
    event_log_limit: int = Field(default=100_000, ge=0)
    seed: int = 0
    version: str = "0.30.0"
    gen_tokens_per_s: float = 50.0
    prefill_tokens_per_s: float = 1000.0
    models: tuple[ModelConfig, ...] = ()
    daemons: tuple[DaemonConfig, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> FleetConfig:
        if self.time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        keys = [m.key for m in self.models]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate model names in fleet file")
        names = [d.name for d in self.daemons]
        if len(set(names)) != len(names):
            raise ValueError("duplicate daemon names in fleet file")
        for d in self.daemons:
            for m in d.models or ():
                if normalize(m) not in keys:
                    raise ValueError(f"daemon {d.name!r} lists unknown model {m!r}")
        return self

    @classmethod
    def load(cls, path: Path | str) -> FleetConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(data)

    def models_for(self, daemon: DaemonConfig) -> list[ModelConfig]:
        if daemon.models is None:
            return list(self.models)
        wanted = {normalize(m) for m in daemon.models}
        return [m for m in self.models if m.key in wanted]

    def gen_rate(self, model: ModelConfig) -> float:
        return model.gen_tokens_per_s or self.gen_tokens_per_s

    def prefill_rate(self, model: ModelConfig) -> float:
        return model.prefill_tokens_per_s or self.prefill_tokens_per_s
