"""``alb serve`` with a change applied at start-up: measure before proposing.

This does not change ``bridge/``; it patches the imported modules in this
process only, so ``bench.overhead --whatif ...`` can put a number on a change
side by side with the unchanged bridge in the same rounds. Patches:

* ``no-gc-freeze``: skip ``bridge.http.server.freeze_heap`` (the ``gc.collect();
  gc.freeze()`` after start-up), to see what the frozen heap is worth;
* ``no-events``: ``ALB_EVENTS=false`` (no access-log / model-state / decision
  events, no prefetch consumer), to see what the events pipeline costs per request.

The earlier ``aiohttp`` and ``gc-freeze`` patches are the bridge's own code now
(``bridge/upstream.py``, ``bridge/http/server.py``); ``BENCHMARKS.md`` keeps their
figures.

    python -m bench.bridge_whatif --patch no-gc-freeze,no-events serve --host H --port P
"""

from __future__ import annotations

import os
import sys

PATCHES = ("no-gc-freeze", "no-events")


def _skip_gc_freeze() -> None:
    from bridge.http import server  # noqa: PLC0415

    def freeze_heap() -> None:
        return None

    server.freeze_heap = freeze_heap


def main() -> None:
    args = sys.argv[1:]
    patches: list[str] = []
    if args[:1] == ["--patch"]:
        patches = [p for p in args[1].split(",") if p]
        args = args[2:]
    for p in patches:
        if p not in PATCHES:
            raise SystemExit(f"unknown patch {p!r}; choose from {PATCHES}")
    from alb.cli import app  # noqa: PLC0415

    if "no-gc-freeze" in patches:
        _skip_gc_freeze()
    if "no-events" in patches:
        os.environ["ALB_EVENTS"] = "false"
    sys.argv = ["alb", *args]
    app()


if __name__ == "__main__":
    main()
