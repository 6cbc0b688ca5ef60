"""``alb sim`` for benchmarks: the same fleet server, on uvloop, heap frozen.

Two things make the simulator a steadier upstream to measure against:

* uvloop: the cheaper event loop, so the simulator takes less of the
  machine's two cores from the process under test. (It also sets
  ``TCP_NODELAY`` on every connection; ``alb sim`` on the stdlib loop did not
  before 3ea7263, and every reply on a kept-alive connection waited ~40 ms for a
  delayed ACK.)
* ``gc.freeze()`` once everything is imported: a full collection walks every
  object the imports created (uvicorn, starlette, pydantic, ...). Measured
  14-17 ms, every 0.3-0.5 s at concurrency 64, each one a p99 spike for every
  request in flight; after ``gc.freeze()``, ~1 ms.

``alb sim`` (``ollamasim.cli.serve_fleet``) does both itself now; this entry point
stays so that ``bench.procs.start_sim`` can also run it on the stdlib loop.

    python -m bench.sim --config bench/fleet.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from pathlib import Path

import uvloop

import ollamasim.app  # noqa: F401 - imported before gc.freeze()
from ollamasim.cli import serve_fleet


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sim", description="Serve a simulated fleet on uvloop."
    )
    parser.add_argument("--config", type=Path, required=True, help="fleet file (YAML)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--stdlib-loop",
        action="store_true",
        help="run on the stdlib loop (as `alb sim` did before it moved to uvloop)",
    )
    args = parser.parse_args()
    if not args.stdlib_loop:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    gc.collect()
    gc.freeze()
    if args.stdlib_loop:  # alb sim picks uvloop itself now
        serve_fleet(args.config, host=args.host, use_uvloop=False)
    else:
        serve_fleet(args.config, host=args.host)


if __name__ == "__main__":
    main()
