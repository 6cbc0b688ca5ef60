"""Model sizes before and after loading: pure arithmetic, no I/O.

Theory of operation. Before a model is loaded its runner's size is estimated as
the file size (``/api/tags``) plus the KV cache::

    kv_bytes_per_token = block_count x head_count_kv x (key_length + value_length)
                         x bytes_per_element              (from /api/show model_info)
    runner ≈ file_size + kv_bytes_per_token x num_ctx x parallel

``key_length``/``value_length`` default to ``embedding_length / head_count`` (the head
dimension); ``bytes_per_element`` is 2 for Ollama's default f16 cache. Checked
against the real tiny model of docs/real-ollama.md (2 layers, 2 KV heads, head
dim 16: 2 x 2 x 32 x 2 = 256 B/token; its ``/api/ps`` sizes at num_ctx 2048 and 1024
differ by 262,144 B = 1024 x 256) and against ollamasim, whose default
``kv_bytes_per_token`` (131,072) is exactly this formula for its default model_info
(32 layers, 8 KV heads, 4096/32 = 128 dims). Real runners add compute buffers the
formula leaves out; that is what the headroom and the learned sizes are for.

After every load the real size reported by ``/api/ps`` is remembered per
(model, num_ctx, parallel) in a ``SizeBook``; later estimates for the same model
anchor on the nearest learned size and add or remove KV cache from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Used when model_info lacks the attention shape (an 8B llama-class model).
DEFAULT_KV_BYTES_PER_TOKEN = 131072


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What sizing and num_ctx policies need to know about one model."""

    key: str
    file_size: int
    #: The model's trained context (``<arch>.context_length``); 0 when unknown.
    context_length: int
    kv_bytes_per_token: int
    embedding_only: bool = False


def _int(info: Mapping[str, Any], key: str) -> int:
    value = info.get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def kv_bytes_per_token(model_info: Mapping[str, Any], bytes_per_element: float = 2.0) -> int | None:
    """KV-cache bytes per context token of one sequence, all layers; None when
    ``model_info`` does not describe the attention shape."""
    arch = model_info.get("general.architecture")
    if not isinstance(arch, str):
        return None
    layers = _int(model_info, f"{arch}.block_count")
    heads = _int(model_info, f"{arch}.attention.head_count")
    kv_heads = _int(model_info, f"{arch}.attention.head_count_kv") or heads
    width = _int(model_info, f"{arch}.embedding_length")
    head_dim = width // heads if heads else 0
    k_len = _int(model_info, f"{arch}.attention.key_length") or head_dim
    v_len = _int(model_info, f"{arch}.attention.value_length") or head_dim
    if not (layers and kv_heads and k_len and v_len):
        return None
    return int(layers * kv_heads * (k_len + v_len) * bytes_per_element)


def context_length(model_info: Mapping[str, Any]) -> int:
    arch = model_info.get("general.architecture")
    return _int(model_info, f"{arch}.context_length") if isinstance(arch, str) else 0


def model_info_from_show(
    key: str, file_size: int, show: Mapping[str, Any], bytes_per_element: float = 2.0
) -> ModelInfo:
    """A ``ModelInfo`` from an ``/api/show`` reply and the ``/api/tags`` file size."""
    info = show.get("model_info")
    info = info if isinstance(info, Mapping) else {}
    caps = show.get("capabilities") or ("completion",)
    kv = kv_bytes_per_token(info, bytes_per_element)
    return ModelInfo(
        key=key,
        file_size=max(int(file_size), 0),
        context_length=context_length(info),
        kv_bytes_per_token=DEFAULT_KV_BYTES_PER_TOKEN if kv is None else kv,
        embedding_only="completion" not in caps,
    )


def estimate(info: ModelInfo, num_ctx: int, parallel: int) -> int:
    """Runner bytes from the formula alone."""
    return info.file_size + info.kv_bytes_per_token * max(num_ctx, 0) * max(parallel, 1)


class SizeBook:
    """Real runner sizes learned from ``/api/ps``, per (model, num_ctx, parallel)."""

    __slots__ = ("_sizes",)

    def __init__(self) -> None:
        self._sizes: dict[str, dict[tuple[int, int], int]] = {}

    def learn(self, key: str, num_ctx: int, parallel: int, size: int) -> None:
        if num_ctx > 0 and size > 0:
            self._sizes.setdefault(key, {})[(num_ctx, max(parallel, 1))] = size

    def known(self, key: str, num_ctx: int, parallel: int) -> int | None:
        return self._sizes.get(key, {}).get((num_ctx, max(parallel, 1)))

    def size(self, info: ModelInfo, num_ctx: int, parallel: int) -> int:
        """The learned size, else the nearest learned one corrected by the KV
        difference, else the formula; never below the formula's KV share."""
        parallel = max(parallel, 1)
        learned = self._sizes.get(info.key)
        if not learned:
            return estimate(info, num_ctx, parallel)
        exact = learned.get((num_ctx, parallel))
        if exact is not None:
            return exact
        (ctx0, par0), size0 = min(
            learned.items(), key=lambda kv: abs(kv[0][0] * kv[0][1] - num_ctx * parallel)
        )
        delta = info.kv_bytes_per_token * (num_ctx * parallel - ctx0 * par0)
        return max(size0 + delta, estimate(info, num_ctx, parallel) - info.file_size)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            key: {f"{ctx}x{par}": size for (ctx, par), size in rows.items()}
            for key, rows in self._sizes.items()
        }
