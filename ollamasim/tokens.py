"""Deterministic stand-ins for a tokenizer, a sampler and an embedder.

Tokenisation: one token per word or punctuation mark (regex ``\\w+|[^\\w\\s]``),
each mapped to a stable id via CRC-32. Good enough for the behaviours that
matter here: counts grow with text, and two prompts share a token prefix
exactly when they share a textual prefix of whole words.

Generated text is drawn from a small vocabulary with ``random.Random`` seeded
by the fleet seed, the model name, the request's ``seed`` option and the prompt,
so the same request always yields the same words.
"""

from __future__ import annotations

import math
import random
import re
import zlib

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_VOCAB = [
    "the",
    "model",
    "answers",
    "with",
    "plain",
    "words",
    "so",
    "that",
    "tests",
    "can",
    "count",
    "tokens",
    "and",
    "compare",
    "streams",
    "without",
    "caring",
    "about",
    "meaning",
    "while",
    "the",
    "scheduler",
    "keeps",
    "runners",
    "warm",
    "and",
    "evicts",
    "idle",
    "ones",
    "when",
    "memory",
    "is",
    "short",
]


def tokenize(text: str) -> list[int]:
    return [zlib.crc32(t.encode()) & 0x7FFFFFFF for t in _TOKEN_RE.findall(text)]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def generate_words(seed: int, model: str, prompt: str, count: int, req_seed: int = -1) -> list[str]:
    """``count`` pieces of text, each one token, the first without a leading space."""
    key = f"{seed}|{model}|{req_seed}|{prompt}".encode()
    rng = random.Random(zlib.crc32(key))
    words = [rng.choice(_VOCAB) for _ in range(count)]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def embed(seed: int, model: str, text: str, dims: int) -> list[float]:
    """A unit-length vector, stable for (seed, model, text)."""
    rng = random.Random(zlib.crc32(f"{seed}|{model}|{text}".encode()))
    vec = [rng.uniform(-1.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]
