"""The hashes that stand in for prompt text in events.

Decision: full SHA-256 of the exact UTF-8 bytes, lower-case hex (64 characters), no
normalisation and no truncation.

- Exact bytes, because a KV prefix is reused only for exactly the same tokens: two
  system prompts that differ in one space are different prefixes and must hash apart.
- Not truncated, because the hash is a shared key (Kafka events, the Redis registry,
  traces written by other tools) and anyone can recompute it with ``sha256sum``;
  32 bytes per event is not worth an ambiguity.
- Pseudonymous, not anonymous: a short or guessable prompt can be confirmed by
  hashing a guess. Topics holding these hashes get the access control of the logs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

PREFIX_CHARS = 1024
"""Length, in characters of the rendered conversation, of the prefix that is hashed."""
_RECORD = "\x1e"  # ASCII record separator after each message
_UNIT = "\x1f"  # ASCII unit separator between role and content


def system_prompt_hash(text: str) -> str:
    """``sha256(text.encode("utf-8")).hexdigest()``: the key of the prompt registry."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def render_prefix(messages: Iterable[tuple[str, str]], limit: int = PREFIX_CHARS) -> str:
    """The first ``limit`` characters of ``role 0x1F content 0x1E`` for each message."""
    parts: list[str] = []
    size = 0
    for role, content in messages:
        part = f"{role}{_UNIT}{content}{_RECORD}"
        parts.append(part)
        size += len(part)
        if size >= limit:
            break
    return "".join(parts)[:limit]


def prefix_hash(messages: Iterable[tuple[str, str]]) -> str:
    """Hash of the first ``PREFIX_CHARS`` characters of the rendered conversation.

    ``messages`` are ``(role, content)`` pairs in order, the system prompt first when
    there is one; for ``/api/generate`` pass ``[("system", system), ("user", prompt)]``
    (omit an empty system). Requests with the same hash start with the same text
    (system prompt, few-shot examples, shared history), so they can share a KV prefix
    on one runner; the predictor and analytics group by it.
    """
    return hashlib.sha256(render_prefix(messages).encode("utf-8")).hexdigest()
