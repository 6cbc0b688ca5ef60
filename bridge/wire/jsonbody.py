"""One reading of a JSON request body, the same one Ollama makes (pure, no I/O).

Theory of operation. ``decode`` turns the bytes into a document once and checks the
limits every later re-encoding relies on (``check_limits``): nesting depth and integer
range. orjson reads 1,024 levels and integers up to 2^64 but writes only 254 levels and
refuses integers past 64 bits, so a body inside these limits can always be re-encoded
(the keep-alive rewrite, the /v1 translation, the access-log event) and a body outside
them is a 400 that names where, before any slot is taken. Strings are bounded by the
body cap (``ALB_MAX_BODY_BYTES``), the model's name by ``parsing.MAX_NAME_CHARS``. The
walk over the document is skipped for a small body with no more brackets than the depth
limit and no run of 19 digits: it cannot pass either limit (~0.3 µs instead of ~3 µs).

Ollama decodes bodies into Go structs with ``encoding/json``, which matches a key to a
field case-insensitively (Unicode simple folding: ``K``, the Kelvin sign, is ``k``; the
long s, U+017F, is ``s``), the last match winning. orjson matches nothing: the bridge would
read ``model`` where Ollama reads ``Model``. ``fold_keys`` gives the bridge Go's reading
of the fields it knows: a single case variant is renamed to the field's own spelling
(and the body is forwarded re-encoded, so the daemon reads exactly what the bridge read);
two spellings of one field are refused with a 400. Refused rather than folded, because
which one wins depends on key order, which no client means to rely on, and a body that
spells ``model`` twice is the shape of a policy bypass, never of a real client. Maps
(``options``) are matched exactly by Ollama too, and are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from bridge.errors import BadRequest

#: Deepest nesting accepted (orjson writes at most 254 levels; re-encodings add a few).
MAX_DEPTH = 64
#: Integers must fit a signed 64-bit integer (what orjson writes and Go's int holds).
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
#: Bodies up to this size are scanned for what could pass a limit before the walk.
_QUICK_MAX = 64 * 1024
_LONG_DIGITS = re.compile(rb"\d{19}")

#: The two non-ASCII letters whose simple case folding reaches ASCII (Go matches
#: ``\u212a`` to ``k`` and ``\u017f`` to ``s``); every other non-ASCII key matches no
#: field of Ollama's request structs, whose names are ASCII.
_TO_ASCII = str.maketrans({"\u212a": "k", "\u017f": "s"})


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object in ``body``, within the limits; ``BadRequest`` otherwise."""
    if not body.strip():
        raise BadRequest("missing request body")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the request body must be a JSON object")
    if len(body) > _QUICK_MAX or _might_pass_limits(body):
        check_limits(doc)
    return doc


def _might_pass_limits(body: bytes) -> bool:
    """False when ``body`` cannot pass a limit: no more brackets than ``MAX_DEPTH``, and
    no run of 19 digits (every 64-bit integer has at most 19) — the walk is skipped."""
    return body.count(b"[") + body.count(b"{") > MAX_DEPTH or _LONG_DIGITS.search(body) is not None


def check_limits(doc: Any) -> None:
    """``BadRequest`` naming the first place where ``doc`` passes a limit."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(doc, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict):
            if depth > MAX_DEPTH:
                raise BadRequest(f"{_where(path)} nests deeper than {MAX_DEPTH} levels")
            for k, v in value.items():
                if isinstance(v, dict | list):
                    stack.append((v, depth + 1, (path, k)))
                elif type(v) is int and not INT_MIN <= v <= INT_MAX:
                    raise BadRequest(f"{_where((path, k))} is out of range (64-bit integers)")
        elif isinstance(value, list):
            if depth > MAX_DEPTH:
                raise BadRequest(f"{_where(path)} nests deeper than {MAX_DEPTH} levels")
            for i, v in enumerate(value):
                if isinstance(v, dict | list):
                    stack.append((v, depth + 1, (path, i)))
                elif type(v) is int and not INT_MIN <= v <= INT_MAX:
                    raise BadRequest(f"{_where((path, i))} is out of range (64-bit integers)")


def _where(path: tuple[Any, ...]) -> str:
    """``(((), 'messages'), 0)`` -> ``'messages[0]'``; the body itself for ``()``."""
    parts: list[Any] = []
    while path:
        path, last = path
        parts.append(last)
    text = ""
    parts.reverse()
    if len(parts) > 4:
        parts[4:] = ["…"]
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text and part != "…" else str(part)
    return f"'{text}'" if text else "the body"


def go_fold(key: str) -> str | None:
    """``key`` as Go's ``encoding/json`` compares it with an ASCII field name (lower
    case), or None when it can match no ASCII name."""
    folded = key.translate(_TO_ASCII)
    return folded.lower() if folded.isascii() else None


def fold_keys(obj: Mapping[str, Any], fields: frozenset[str], where: str = "") -> dict[str, Any]:
    """``obj`` with each case variant of a name in ``fields`` renamed to that name (the
    same object when nothing changes); ``BadRequest`` when one field is spelt twice."""
    if fields.issuperset(obj):  # the usual case: every key is a field, spelt as one
        return obj if isinstance(obj, dict) else dict(obj)
    renamed: dict[str, str] = {}
    seen: dict[str, str] = {}
    for k in obj:
        name = k if k in fields else go_fold(k)
        if name is None or name not in fields:
            continue
        if name in seen:
            raise BadRequest(
                f"field '{where}{name}' is given twice ({seen[name]!r} and {k!r}); "
                f"send it once, spelt {name!r}"
            )
        seen[name] = k
        if name != k:
            renamed[k] = name
    if not renamed:
        return obj if isinstance(obj, dict) else dict(obj)
    return {renamed.get(k, k): v for k, v in obj.items()}
