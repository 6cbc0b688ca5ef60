"""Fault injection, set from tests (``RunningDaemon.faults``) or over HTTP
(``POST /_sim/faults``). Each fault may be scoped to one model.

HTTP body (every key optional)::

    {"hang_load": {"model": "llama3"},
     "slow_load": {"factor": 5},
     "error_mid_stream": {"after_chunks": 3, "message": "boom"},
     "end_stream_early": {"after_chunks": 3},
     "fail_requests": {"count": 2, "status": 500, "message": "injected"},
     "crash": {"restart_after_s": 1.0}}
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ollamasim.names import normalize


@dataclass(frozen=True)
class StreamFault:
    after_chunks: int
    message: str | None  # None: end the stream cleanly without a done object
    model: str | None


@dataclass
class _Counted:
    count: int
    status: int
    message: str
    model: str | None


class Faults:
    """Thread-safe fault switches; the engine polls them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._hang: set[str | None] = set()
            self._slow: dict[str | None, float] = {}
            self._stream: StreamFault | None = None
            self._fail: _Counted | None = None

    # --- setters -----------------------------------------------------------
    def hang_load(self, model: str | None = None) -> None:
        with self._lock:
            self._hang.add(_key(model))

    def clear_hang(self) -> None:
        with self._lock:
            self._hang.clear()

    def slow_load(self, factor: float, model: str | None = None) -> None:
        with self._lock:
            self._slow[_key(model)] = factor

    def error_mid_stream(
        self, after_chunks: int, message: str = "simulated runner failure", model: str | None = None
    ) -> None:
        with self._lock:
            self._stream = StreamFault(after_chunks, message, _key(model))

    def end_stream_early(self, after_chunks: int, model: str | None = None) -> None:
        with self._lock:
            self._stream = StreamFault(after_chunks, None, _key(model))

    def fail_requests(
        self,
        count: int,
        status: int = 500,
        message: str = "simulated failure",
        model: str | None = None,
    ) -> None:
        with self._lock:
            self._fail = _Counted(count, status, message, _key(model))

    def apply(self, spec: dict[str, Any]) -> None:
        """Apply the HTTP body shape documented in the module docstring."""
        if (h := spec.get("hang_load")) is not None:
            if h is False:
                self.clear_hang()
            else:
                self.hang_load((h or {}).get("model") if isinstance(h, dict) else None)
        if (s := spec.get("slow_load")) is not None:
            self.slow_load(float(s.get("factor", 1.0)), s.get("model"))
        if (e := spec.get("error_mid_stream")) is not None:
            self.error_mid_stream(
                int(e.get("after_chunks", 0)),
                str(e.get("message", "simulated runner failure")),
                e.get("model"),
            )
        if (t := spec.get("end_stream_early")) is not None:
            self.end_stream_early(int(t.get("after_chunks", 0)), t.get("model"))
        if (f := spec.get("fail_requests")) is not None:
            self.fail_requests(
                int(f.get("count", 1)),
                int(f.get("status", 500)),
                str(f.get("message", "simulated failure")),
                f.get("model"),
            )

    # --- queries (engine side) ----------------------------------------------
    def load_hangs(self, model: str) -> bool:
        with self._lock:
            return None in self._hang or normalize(model) in self._hang

    def load_factor(self, model: str) -> float:
        with self._lock:
            return self._slow.get(normalize(model), self._slow.get(None, 1.0))

    def stream_fault(self, model: str) -> StreamFault | None:
        with self._lock:
            f = self._stream
            if f is None or (f.model is not None and f.model != normalize(model)):
                return None
            return f

    def take_failure(self, model: str) -> tuple[int, str] | None:
        with self._lock:
            f = self._fail
            if f is None or f.count <= 0:
                return None
            if f.model is not None and f.model != normalize(model):
                return None
            f.count -= 1
            return f.status, f.message

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "hang_load": sorted(m or "*" for m in self._hang),
                "slow_load": {(k or "*"): v for k, v in self._slow.items()},
                "stream": None
                if self._stream is None
                else {
                    "after_chunks": self._stream.after_chunks,
                    "message": self._stream.message,
                    "model": self._stream.model,
                },
                "fail_requests": None
                if self._fail is None
                else {
                    "count": self._fail.count,
                    "status": self._fail.status,
                    "message": self._fail.message,
                    "model": self._fail.model,
                },
            }


def _key(model: str | None) -> str | None:
    return None if model is None else normalize(model)
