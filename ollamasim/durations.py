"""Go's durations and timestamps, byte for byte.

``keep_alive`` is decoded by Ollama's ``api.Duration.UnmarshalJSON`` (api/types.go):
a JSON number is seconds (fractions kept, negative = forever), a string goes
through Go's ``time.ParseDuration`` (so ``"300"`` fails with
``time: missing unit in duration "300"`` and ``"-1"`` likewise), a negative
duration becomes ``math.MaxInt64`` nanoseconds, and any other JSON type fails
with ``Unsupported type: '<go type>'``. Timestamps are printed the way Go's
``time.Time.MarshalJSON`` prints them (RFC 3339 with up to nine fractional
digits, trailing zeros trimmed, ``Z`` or the local offset).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

NANOS = 1_000_000_000
MAX_DURATION_NS = 2**63 - 1  # time.Duration(math.MaxInt64), ~292 years
DEFAULT_KEEP_ALIVE_NS = 5 * 60 * NANOS

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5
    "μs": 1_000,  # U+03BC
    "ms": 1_000_000,
    "s": NANOS,
    "m": 60 * NANOS,
    "h": 3600 * NANOS,
}


class DurationError(ValueError):
    """The exact message Go returns; Ollama sends it as the 400 error body."""


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_go_duration(orig: str) -> int:
    """Port of Go's ``time.ParseDuration``; returns nanoseconds."""
    s = orig
    neg = False
    if s and s[0] in "-+":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise DurationError("time: invalid duration " + _quote(orig))
    total = 0.0
    while s:
        if not (s[0] == "." or s[0].isdigit()):
            raise DurationError("time: invalid duration " + _quote(orig))
        i = 0
        while i < len(s) and s[i].isdigit():
            i += 1
        int_part = s[:i]
        s = s[i:]
        frac_part = ""
        if s.startswith("."):
            s = s[1:]
            j = 0
            while j < len(s) and s[j].isdigit():
                j += 1
            frac_part = s[:j]
            s = s[j:]
        if not int_part and not frac_part:
            raise DurationError("time: invalid duration " + _quote(orig))
        k = 0
        while k < len(s) and s[k] != "." and not s[k].isdigit():
            k += 1
        unit = s[:k]
        s = s[k:]
        if unit == "":
            raise DurationError("time: missing unit in duration " + _quote(orig))
        if unit not in _UNIT_NS:
            raise DurationError(
                "time: unknown unit " + _quote(unit) + " in duration " + _quote(orig)
            )
        value = float(int_part or "0")
        if frac_part:
            value += float("0." + frac_part)
        total += value * _UNIT_NS[unit]
        if total > MAX_DURATION_NS:
            raise DurationError("time: invalid duration " + _quote(orig))
    ns = int(total)
    return -ns if neg else ns


def _go_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, dict):
        return "map[string]interface {}"
    if isinstance(v, list):
        return "[]interface {}"
    return type(v).__name__


def parse_keep_alive(value: Any) -> int:
    """``api.Duration.UnmarshalJSON``: nanoseconds, MAX_DURATION_NS for forever.

    ``null`` is handled by the caller (the field stays unset)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DurationError(f"Unsupported type: '{_go_type(value)}'")
    if isinstance(value, str):
        ns = parse_go_duration(value)
        return MAX_DURATION_NS if ns < 0 else ns
    if value < 0:
        return MAX_DURATION_NS
    return min(int(value * NANOS), MAX_DURATION_NS)


def format_go_time(t: dt.datetime) -> str:
    """Go's RFC3339Nano as used by ``time.Time.MarshalJSON``."""
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{t.microsecond:06d}".rstrip("0")
    if frac:
        base += "." + frac
    off = t.utcoffset()
    if off is None or off == dt.timedelta(0):
        return base + ("Z" if off is not None else "")
    total = int(off.total_seconds())
    sign = "+" if total >= 0 else "-"
    total = abs(total)
    return f"{base}{sign}{total // 3600:02d}:{total % 3600 // 60:02d}"


def go_time_from_unix(seconds: float, *, utc: bool) -> str:
    """Timestamp ``seconds`` after the epoch, in UTC or the local zone.

    Years beyond Python's datetime range (the pinned ~292-year expiry) are
    produced by shifting whole 400-year Gregorian cycles, which keeps the
    calendar and weekday identical."""
    shift_years = 0
    span_400y = 146097 * 86400
    while seconds > 253402300799 - span_400y:  # stay below 9999-12-31
        seconds -= span_400y
        shift_years += 400
    if utc:
        t = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    else:
        t = dt.datetime.fromtimestamp(seconds).astimezone()
    text = format_go_time(t)
    if shift_years:
        year = int(text[:4]) + shift_years
        text = f"{year:04d}" + text[4:]
    return text


def human_bytes2(b: int) -> str:
    """Ollama's ``format.HumanBytes2`` (binary units, one decimal)."""
    kib, mib, gib = 1024, 1024**2, 1024**3
    if b >= gib:
        return f"{b / gib:.1f} GiB"
    if b >= mib:
        return f"{b / mib:.1f} MiB"
    if b >= kib:
        return f"{b / kib:.1f} KiB"
    return f"{b} B"
