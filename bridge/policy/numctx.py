"""How much context a request needs, and which num_ctx a load should ask for.

Pure functions plus a small calibration table; no I/O.

* ``estimate_prompt`` counts the characters a request puts into the prompt
  (system, prompt/suffix, every message's text, tool schemas) and converts them
  with the model's characters-per-token ratio; each message adds a few template
  tokens, each image ``image_tokens``.
* ``need_for`` adds the answer (``num_predict`` / ``max_tokens``, else a default),
  honours a client ``num_ctx`` within bounds, and refuses (``BadRequest``) a
  request that cannot fit the model's trained context at all.
* ``Need.fits`` says whether a loaded runner can serve it: native requests fit any
  runner with enough context; OpenAI-surface requests cannot carry ``num_ctx``
  (Ollama's /v1 has no options), so they only fit a runner loaded without one
  ("auto", at the daemon's default) — any other runner would be reloaded by Ollama —
  unless they are ``translate``-able (chat and completions): those also fit a runner
  with enough context, and are sent to it through the native API with its num_ctx
  (``bridge.wire.openai_native``).
* ``bucket`` rounds a need up to the configured buckets, capped at the model's context.
* ``choose_target`` picks the runner a load asks for: the daemon's default context
  (shared with /v1) when it covers the needs and fits, else the smallest bucket.
* ``Calibrator`` learns each model's characters-per-token from ``prompt_eval_count``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.errors import BadRequest

#: Template tokens per message (role markers, separators) and per request.
_PER_MESSAGE = 4
_PER_REQUEST = 8
_RATIO_MIN, _RATIO_MAX = 1.0, 12.0
#: Estimates are made a little pessimistic: undersizing costs a reload or truncation.
_MARGIN = 1.1
_PROMPT_EVAL = re.compile(rb'"(?:prompt_eval_count|prompt_tokens)":\s*(\d+)')
_OUTPUT_EVAL = re.compile(rb'"(?:eval_count|completion_tokens)":\s*(\d+)')


@dataclass(frozen=True, slots=True)
class Need:
    """The context a request needs. ``auto``: it cannot say num_ctx (OpenAI surface)."""

    tokens: int
    auto: bool = False
    #: What the estimate was made of (decision records).
    prompt_tokens: int = 0
    predict_tokens: int = 0
    client_num_ctx: int | None = None
    #: An /v1 request the bridge may serve through the native API (chat, completions).
    translate: bool = False

    def fits(self, ctx: int, auto_runner: bool) -> bool:
        if self.auto:
            if auto_runner:
                # The default runner serves it as Ollama's /v1 would, unless its prompt
                # is longer than that runner's context (Ollama would cut it) and the
                # request can be translated: then a runner that holds it.
                return not self.cut_at(ctx)
            return self.translate and ctx >= self.tokens
        return ctx >= self.tokens

    def cut_at(self, ctx: int) -> bool:
        """A translatable /v1 request whose prompt a runner of ``ctx`` (known) would
        cut short."""
        return self.auto and self.translate and 0 < ctx < self.prompt_tokens


@dataclass(frozen=True, slots=True)
class PromptSize:
    chars: int
    messages: int
    images: int

    def tokens(self, chars_per_token: float, image_tokens: int) -> int:
        text = math.ceil(self.chars / chars_per_token * _MARGIN) if self.chars else 0
        return text + self.messages * _PER_MESSAGE + self.images * image_tokens + _PER_REQUEST


def _text_len(value: Any) -> tuple[int, int]:
    """(characters, images) of a message ``content`` (a string or OpenAI parts)."""
    if isinstance(value, str):
        return len(value), 0
    chars = images = 0
    if isinstance(value, list):
        for part in value:
            if isinstance(part, dict):
                if part.get("type") in ("image_url", "input_image", "image"):
                    images += 1
                text = part.get("text")
                if isinstance(text, str):
                    chars += len(text)
            elif isinstance(part, str):
                chars += len(part)
    return chars, images


def prompt_size(doc: Mapping[str, Any]) -> PromptSize:
    """What the prompt of a generate/chat/embed/completions body is made of."""
    chars = images = messages = 0
    for field in ("system", "prompt", "suffix"):
        value = doc.get(field)
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):  # /v1/completions accepts a list of prompts
            chars += sum(len(v) for v in value if isinstance(v, str))
    msgs = doc.get("messages")
    for msg in msgs if isinstance(msgs, list) else ():
        if not isinstance(msg, dict):
            continue
        messages += 1
        c, i = _text_len(msg.get("content"))
        chars += c
        images += i
        imgs = msg.get("images")
        images += len(imgs) if isinstance(imgs, list) else 0
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            chars += sum(len(orjson.dumps(call)) for call in calls)
    imgs = doc.get("images")
    images += len(imgs) if isinstance(imgs, list) else 0
    tools = doc.get("tools")
    if isinstance(tools, list) and tools:
        chars += len(orjson.dumps(tools))
    return PromptSize(chars, messages, images)


def embed_size(doc: Mapping[str, Any]) -> PromptSize:
    """Embedding inputs are separate sequences: the longest one is the need."""
    value = doc.get("input", doc.get("prompt"))
    if isinstance(value, str):
        return PromptSize(len(value), 0, 0)
    if isinstance(value, list) and value:
        return PromptSize(max((len(v) for v in value if isinstance(v, str)), default=0), 0, 0)
    return PromptSize(0, 0, 0)


def predict_tokens(doc: Mapping[str, Any], default: int) -> int:
    """Tokens the answer may take: ``num_predict`` / ``max_tokens``, else ``default``."""
    options = doc.get("options")
    candidates: list[Any] = []
    if isinstance(options, dict):
        candidates.append(options.get("num_predict"))
    candidates += [doc.get("max_completion_tokens"), doc.get("max_tokens")]
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def client_num_ctx(doc: Mapping[str, Any]) -> int | None:
    options = doc.get("options")
    if isinstance(options, dict):
        value = options.get("num_ctx")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


@dataclass(frozen=True, slots=True)
class Limits:
    """The num_ctx settings, as the policy needs them."""

    buckets: tuple[int, ...]
    num_ctx_min: int
    num_ctx_max: int
    num_predict_default: int
    image_tokens: int


def need_for(
    doc: Mapping[str, Any],
    *,
    embed: bool,
    openai: bool,
    model_context: int,
    chars_per_token: float,
    limits: Limits,
    translate: bool = False,
) -> Need:
    """The context ``doc`` needs on a model trained for ``model_context`` tokens
    (0 = unknown). ``BadRequest`` when it cannot fit the model at all. ``translate``:
    an /v1 request that may be served through the native API."""
    if embed:
        size = embed_size(doc)
        prompt = size.tokens(chars_per_token, limits.image_tokens)
        predict = 0
    else:
        size = prompt_size(doc)
        prompt = size.tokens(chars_per_token, limits.image_tokens)
        predict = predict_tokens(doc, limits.num_predict_default)
    asked = None if openai else client_num_ctx(doc)
    tokens = prompt + predict
    if asked is not None:
        asked = min(max(asked, limits.num_ctx_min), limits.num_ctx_max)
        tokens = max(tokens, asked)
    if embed and model_context:
        tokens = min(tokens, model_context)  # Ollama truncates embedding inputs by default
    elif model_context and prompt + 1 > model_context:
        raise BadRequest(
            f"the prompt needs about {prompt} tokens but the model's context is "
            f"{model_context} tokens; shorten it"
        )
    elif model_context and tokens > model_context:
        tokens = model_context  # the answer is what gets cut short, as in Ollama
    return Need(tokens, openai, prompt, predict, asked, openai and translate)


def bucket(tokens: int, buckets: Sequence[int], model_context: int) -> int:
    """The smallest bucket holding ``tokens`` (doubling past the last), capped at
    the model's context."""
    size = next((b for b in buckets if b >= tokens), 0)
    if not size:
        size = buckets[-1] if buckets else 2048
        while size < tokens:
            size *= 2
    return min(size, model_context) if model_context else size


@dataclass(frozen=True, slots=True)
class DaemonDefault:
    """A daemon's default ``num_ctx`` (its ``OLLAMA_CONTEXT_LENGTH``, else Ollama's VRAM
    tier). ``known``: configured or learned from ``/api/ps``; else guessed from capacity."""

    ctx: int
    known: bool


_GIB = 1024**3


def vram_tier_ctx(capacity: int | None) -> int:
    """Ollama's default num_ctx for a daemon of ``capacity`` bytes (routes.go ``Serve``)."""
    if capacity is None:
        return 4096
    return 262144 if capacity >= 47 * _GIB else 32768 if capacity >= 23 * _GIB else 4096


def daemon_default(
    configured: int | None, learned: int | None, capacity: int | None
) -> DaemonDefault:
    """A daemon's default num_ctx: configured, else learned (``step.learned``), else
    Ollama's VRAM tier for its capacity (a guess)."""
    if configured:
        return DaemonDefault(configured, True)
    if learned:
        return DaemonDefault(learned, True)
    return DaemonDefault(vram_tier_ctx(capacity), False)


@dataclass(frozen=True, slots=True)
class Target:
    """What a load asks for.

    ``ctx``: the runner's per-sequence context (requests fit against it, its size is
    estimated at it); ``num_ctx``: what the load sends (None: nothing, the daemon's
    default applies); ``auto``: the runner is at the daemon's default, so /v1 requests
    (which cannot send num_ctx) use it without Ollama reloading it; ``size``: bytes."""

    ctx: int
    auto: bool
    size: int
    num_ctx: int | None = None
    #: Why this context (decision records).
    reason: str = "bucket"


def choose_target(
    needs: Sequence[Need],
    *,
    default: DaemonDefault,
    auto_ctx: int | None,
    model_context: int,
    limits: Limits,
    prefer_default: bool,
    size: Callable[[int], int],
    room: int | None,
) -> Target:
    """The runner a load for ``needs`` asks for on one daemon.

    ``auto_ctx``: the context a default runner of this model really got there (from
    ``/api/ps``), when known; ``room``: bytes it may take at most (None: no limit).

    * Any /v1 need: a default runner; there is no other choice (Ollama's /v1 sends
      no num_ctx), even when it does not fit (the caller refuses it, saying why) —
      unless every /v1 need can be translated and native needs want more than the
      default, or a /v1 prompt is longer than the default (Ollama would cut it): then
      the bucket for all of them, and the /v1 ones go through the native API at its
      num_ctx (no reload back and forth between the two, no prompt cut short).
    * Native needs the default covers (``prefer_default``): the default runner, if
      it fits ``room``, so /v1 can share it. When the default is known the load sends
      it explicitly: the same runner for Ollama (it compares the requested num_ctx
      with its default), and the size the bridge planned for.
    * Otherwise the smallest bucket, sent explicitly (``default-too-big`` when the
      default was skipped for want of room). A bucket equal to a known default is a
      default runner too.
    Sending the default while it is only guessed would make a runner that /v1 traffic
    reloads whenever the guess is wrong, so an unknown default is never sent.
    """
    eff = auto_ctx or default.ctx
    if model_context:
        eff = min(eff, model_context)
    send = default.ctx if default.known else None
    if any(n.auto for n in needs) and not (
        all(n.translate for n in needs if n.auto)
        and (
            max((n.tokens for n in needs if not n.auto), default=0) > eff
            or any(n.cut_at(eff) for n in needs)
        )
    ):
        return Target(eff, True, size(eff), send, "openai-surface-needs-default-context")
    tokens = max((n.tokens for n in needs), default=limits.num_ctx_min)
    reason = "bucket"
    if prefer_default and tokens <= eff:
        got = size(eff)
        if room is None or got <= room:
            return Target(eff, True, got, send, "daemon-default")
        reason = "default-too-big"
    ctx = bucket(tokens, limits.buckets, model_context)
    shared = default.known and ctx == default.ctx
    return Target(ctx, shared, size(ctx), ctx, reason)


def openai_default_hint(default: DaemonDefault) -> str:
    """Why a /v1 request cannot get a smaller runner, and what the operator can do."""
    told = "" if default.known else " (assumed: Ollama's VRAM tier for the daemon's memory)"
    fix = (
        ""
        if default.known
        else "; if the daemon's OLLAMA_CONTEXT_LENGTH is lower, tell the bridge "
        "(?default_ctx=N in ALB_DAEMONS, or ALB_DEFAULT_NUM_CTX)"
    )
    return (
        f"OpenAI-surface (/v1) requests cannot set num_ctx, so Ollama runs them at its "
        f"default context, {default.ctx} tokens{told}; use the native API with a smaller "
        f"options.num_ctx, or lower the daemon's OLLAMA_CONTEXT_LENGTH{fix}"
    )


class Calibrator:
    """Per-model characters per token, learned from the daemons' own counts."""

    __slots__ = ("_default", "_ratio")

    def __init__(self, default: float) -> None:
        self._default = default
        self._ratio: dict[str, float] = {}

    def ratio(self, key: str) -> float:
        return self._ratio.get(key, self._default)

    def observe(
        self, key: str, size: PromptSize, prompt_eval_count: int, image_tokens: int
    ) -> None:
        overhead = size.messages * _PER_MESSAGE + size.images * image_tokens
        text_tokens = prompt_eval_count - overhead
        if size.chars < 64 or text_tokens <= 0:
            return  # too little text to learn from
        sample = min(max(size.chars / text_tokens, _RATIO_MIN), _RATIO_MAX)
        old = self._ratio.get(key)
        self._ratio[key] = sample if old is None else 0.7 * old + 0.3 * sample

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self._ratio.items()}


def prompt_eval_count(tail: bytes) -> int | None:
    """``prompt_eval_count`` (native) or ``usage.prompt_tokens`` (/v1) in a final frame."""
    m = _PROMPT_EVAL.search(tail)
    return int(m.group(1)) if m else None


def output_eval_count(tail: bytes) -> int | None:
    """``eval_count`` (native) or ``usage.completion_tokens`` (/v1) in a final frame."""
    m = _OUTPUT_EVAL.search(tail)
    return int(m.group(1)) if m else None
