"""``alb sim`` for benchmarks: the same fleet server, on uvloop.

``alb sim`` runs on the stdlib event loop and serves from a socket it bound
itself (``ollamasim.serving.bind_socket``, created with ``proto=0``). The
stdlib loop only sets ``TCP_NODELAY`` on accepted sockets whose ``proto`` is
``IPPROTO_TCP``, so the simulator's connections keep Nagle's algorithm on:
uvicorn writes a response's head and body in two ``send`` calls, the second
waits for the client's delayed ACK, and every reply on a kept-alive
connection arrives ~40 ms late (measured: 44 ms per non-streaming
``/api/chat``, against ~1 ms from a fresh connection). Real Ollama (Go) sets
``TCP_NODELAY`` on every connection. uvloop sets it on every TCP transport, and
is also the cheaper loop, which is what a benchmark upstream should be.

The simulator's event log (``ollamasim.events.EventLog``, kept for tests to
assert on) keeps every event for ever: two per request. Over a benchmark's
hundreds of thousands of requests the heap grows and every full garbage
collection pauses the daemon for longer, which at concurrency 64 stalls all
64 requests at once and shows up as p99. Nothing here reads events, so the
log keeps only the last ``EVENTS_KEPT``.

Even so, a full collection walks every object the imports created (uvicorn,
starlette, pydantic, ...): measured 14-17 ms, every 0.3-0.5 s at concurrency
64, each one a p99 spike of every request in flight. ``gc.freeze()`` after the
imports moves those objects out of the collector's reach: 1 ms.

    python -m bench.sim --config bench/fleet.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from pathlib import Path

import uvloop

from ollamasim.cli import serve_fleet
from ollamasim.events import EventLog, SimEvent

#: Events the benchmark simulator keeps (tests read the log; benchmarks do not).
EVENTS_KEPT = 1000


def _bounded_append(self: EventLog, event: SimEvent) -> None:
    with self._cond:
        self._events.append(event)
        if len(self._events) > 2 * EVENTS_KEPT:
            del self._events[:-EVENTS_KEPT]
        self._cond.notify_all()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sim", description="Serve a simulated fleet on uvloop."
    )
    parser.add_argument("--config", type=Path, required=True, help="fleet file (YAML)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--stdlib-loop", action="store_true", help="run on the stdlib loop, as `alb sim` does"
    )
    args = parser.parse_args()
    EventLog.append = _bounded_append  # type: ignore[method-assign]
    gc.collect()
    gc.freeze()
    if not args.stdlib_loop:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    serve_fleet(args.config, host=args.host)


if __name__ == "__main__":
    main()
