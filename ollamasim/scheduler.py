"""Pure scheduling policy, mirroring Ollama's server/sched.go.

No clocks, sockets or asyncio here: the engine asks these functions and
carries out the answer.

* ``needs_reload`` is ``runnerRef.needsReload``: a loaded runner is reused only
  if the runner options (``api.Runner``: num_ctx, num_batch, num_gpu, main_gpu,
  use_mmap, num_thread) are equal; a requested ``num_gpu < 0`` matches anything;
  num_ctx is first clamped to the model's training context
  (``effectiveContext``); sampling options never matter.
* ``pick_runner_to_unload`` is ``findRunnerToUnload``: sort by keep-alive
  duration as an *unsigned* integer (so pinned runners, stored as MaxInt64,
  sort last and zero sorts first), then by name; prefer the first idle runner,
  else the first overall (which is then unloaded as soon as it goes idle).
* ``default_num_ctx`` is the VRAM tier from routes.go ``Serve``: 4096 below
  23 GiB, 32768 below 47 GiB, else 262144; ``OLLAMA_CONTEXT_LENGTH`` overrides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GIB = 1024**3

RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
DEFAULT_RUNNER_OPTIONS: dict[str, Any] = {
    "num_batch": 512,
    "num_gpu": -1,
    "main_gpu": 0,
    "use_mmap": None,
    "num_thread": 0,
}
_INT_OPTIONS = {
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "num_predict",
    "seed",
    "top_k",
    "num_keep",
    "repeat_last_n",
    "mirostat",
}
_BOOL_OPTIONS = {"use_mmap", "penalize_newline", "numa", "low_vram", "use_mlock"}
_FLOAT_OPTIONS = {
    "temperature",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "mirostat_tau",
    "mirostat_eta",
}


class OptionError(ValueError):
    """``api.Options.FromMap`` type errors (reported as HTTP 500 by Ollama)."""


def check_option_types(options: Mapping[str, Any]) -> None:
    for key, val in options.items():
        if val is None:
            continue
        if key in _INT_OPTIONS and (isinstance(val, bool) or not isinstance(val, int | float)):
            raise OptionError(f'option "{key}" must be of type integer')
        if key in _BOOL_OPTIONS and not isinstance(val, bool):
            raise OptionError(f'option "{key}" must be of type boolean')
        if key in _FLOAT_OPTIONS and (isinstance(val, bool) or not isinstance(val, int | float)):
            raise OptionError(f'option "{key}" must be of type float32')


def default_num_ctx(vram_bytes: int, context_length_env: int = 0) -> int:
    if context_length_env > 0:
        return context_length_env
    if vram_bytes >= 47 * GIB:
        return 262144
    if vram_bytes >= 23 * GIB:
        return 32768
    return 4096


def effective_context(num_ctx: int, train_ctx: int) -> int:
    return train_ctx if 0 < train_ctx < num_ctx else num_ctx


@dataclass(frozen=True)
class RunnerOptions:
    """The load-time options of a runner (``api.Runner``), already resolved."""

    num_ctx: int
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int = 0
    use_mmap: bool | None = None
    num_thread: int = 0
    num_ctx_auto: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RUNNER_OPTIONS}


def resolve_runner_options(
    request_options: Mapping[str, Any],
    model_parameters: Mapping[str, Any],
    *,
    default_ctx: int,
    train_ctx: int,
    vision: bool = False,
) -> RunnerOptions:
    merged: dict[str, Any] = dict(DEFAULT_RUNNER_OPTIONS)
    auto = "num_ctx" not in request_options and "num_ctx" not in model_parameters
    merged["num_ctx"] = default_ctx
    for source in (model_parameters, request_options):
        for k in RUNNER_OPTIONS:
            if k in source and source[k] is not None:
                merged[k] = source[k]
    num_ctx = max(int(merged["num_ctx"]), 4)
    if vision:
        num_ctx = max(num_ctx, 2048)
    num_ctx = effective_context(num_ctx, train_ctx)
    return RunnerOptions(
        num_ctx=num_ctx,
        num_batch=int(merged["num_batch"]),
        num_gpu=int(merged["num_gpu"]),
        main_gpu=int(merged["main_gpu"]),
        use_mmap=merged["use_mmap"],
        num_thread=int(merged["num_thread"]),
        num_ctx_auto=auto,
    )


def needs_reload(loaded: RunnerOptions, wanted: RunnerOptions) -> bool:
    old = loaded.as_dict()
    new = wanted.as_dict()
    if loaded.num_ctx_auto and wanted.num_ctx_auto:
        new["num_ctx"] = old["num_ctx"]
    if new["num_gpu"] < 0:
        old["num_gpu"] = new["num_gpu"] = -1
    return old != new


def changed_options(loaded: RunnerOptions, wanted: RunnerOptions) -> list[str]:
    old, new = loaded.as_dict(), wanted.as_dict()
    if new["num_gpu"] < 0:
        old["num_gpu"] = new["num_gpu"] = -1
    return [k for k in RUNNER_OPTIONS if old[k] != new[k]]


@dataclass(frozen=True)
class UnloadCandidate:
    name: str
    keep_alive_ns: int
    ref_count: int


def pick_runner_to_unload(candidates: Sequence[UnloadCandidate]) -> UnloadCandidate | None:
    if not candidates:
        return None
    ordered = sorted(candidates, key=lambda c: (c.keep_alive_ns % 2**64, c.name))
    for c in ordered:
        if c.ref_count == 0:
            return c
    return ordered[0]


def runner_size(model_size: int, kv_bytes_per_token: int, num_ctx: int, num_parallel: int) -> int:
    """Weights plus KV cache for every parallel sequence."""
    return model_size + kv_bytes_per_token * num_ctx * num_parallel


def parallel_for(num_parallel: int, *, completion: bool, family: str) -> int:
    """``Scheduler.load``: embedding models and some architectures run one sequence."""
    if not completion or family in {
        "mllama",
        "qwen3vl",
        "qwen3vlmoe",
        "qwen35",
        "qwen35moe",
        "qwen3next",
        "lfm2",
        "lfm2moe",
    }:
        return 1
    return max(num_parallel, 1)


def fits(capacity: int, in_use: int, size: int) -> bool:
    return in_use + size <= capacity
