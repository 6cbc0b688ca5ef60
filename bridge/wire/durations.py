"""``keep_alive`` values as Ollama decodes them (``api.Duration.UnmarshalJSON``).

A JSON number is seconds (negative: forever); a string is a Go duration and
needs a unit (``"10m"``; ``"-1"`` and ``"300"`` fail with Go's message, which
Ollama sends back as a 400); anything else is ``Unsupported type``. The bridge
validates exactly like Ollama so a client sees the same 400 through it, then
applies its own policy (``clamp``).
"""

from __future__ import annotations

import math

FOREVER = math.inf
_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class KeepAliveError(ValueError):
    """The message Ollama answers with (HTTP 400)."""


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_go_duration(orig: str) -> float:
    """Go's ``time.ParseDuration``, in seconds."""
    s, neg = orig, False
    if s[:1] in ("-", "+"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise KeepAliveError("time: invalid duration " + _quote(orig))
    total = 0.0
    while s:
        i = 0
        while i < len(s) and (s[i].isdigit() or s[i] == "."):
            i += 1
        number = s[:i]
        if not number or number == "." or number.count(".") > 1:
            raise KeepAliveError("time: invalid duration " + _quote(orig))
        s = s[i:]
        k = 0
        while k < len(s) and not (s[k].isdigit() or s[k] == "."):
            k += 1
        unit, s = s[:k], s[k:]
        if not unit:
            raise KeepAliveError("time: missing unit in duration " + _quote(orig))
        if unit not in _UNIT_S:
            raise KeepAliveError(f"time: unknown unit {_quote(unit)} in duration {_quote(orig)}")
        total += float(number) * _UNIT_S[unit]
    return -total if neg else total


def parse(value: object) -> float:
    """Seconds; ``FOREVER`` for a negative value."""
    if isinstance(value, bool):
        raise KeepAliveError("Unsupported type: 'bool'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_go_duration(value)
    else:
        kind = "[]interface {}" if isinstance(value, list) else "map[string]interface {}"
        raise KeepAliveError(f"Unsupported type: '{kind}'")
    return FOREVER if seconds < 0 else seconds


def clamp(seconds: float, low: float, high: float) -> float:
    return min(max(seconds, low), high)


def to_wire(seconds: float) -> int | float:
    """A JSON value Ollama reads back as ``seconds`` (``-1`` for forever)."""
    if math.isinf(seconds):
        return -1
    return int(seconds) if seconds == int(seconds) else seconds
