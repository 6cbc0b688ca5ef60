"""Events per second per core for the predictor's pure core (target: >= 20 000).

Feeds a pre-built list of access records through ``predictor.core.step`` in one
thread (so the figure is per core), for several configurations side by side, each
repeated ``--repeats`` times in interleaved order (a slow moment of a shared machine
hits every configuration alike). Prints the median events/s, the spread (min-max),
the ratio to the default configuration, outputs and prefetches per 1000 events and the
size of the final state as JSON.

Workload: a synthetic trace (``predictor.traces.synth``, seeded, one session type so
that transitions are predictable and the prefetch path runs) of about ``--requests``
requests over 12 models in one hour, or any trace.v1 file with ``--trace``.
Records are built before timing starts; ticks (as the Faust timer would send) are
issued every ``--tick-s`` seconds of trace time and counted in the elapsed time.

    .venv/bin/python -m bench.predictor_core
    .venv/bin/python -m bench.predictor_core --trace /tmp/azure-fn.jsonl --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from predictor.core import Prefetch, new_state, state_to_dict, step, tick
from predictor.core.config import PredictorConfig
from predictor.core.records import AccessRecord
from predictor.traces.format import read_trace, to_access_records
from predictor.traces.synth import SynthParams, synthesize

TARGET = 20_000.0

CONFIGS: dict[str, Callable[[], PredictorConfig]] = {
    "default (10-min window, sessions, histogram)": PredictorConfig,
    "count window (last 50 / 20 per session)": lambda: PredictorConfig(window="count"),
    "no histogram": lambda: PredictorConfig(histogram=False),
    "seed article (global last 50, >= 0.6)": PredictorConfig.seed_article,
}


def _workload(args: argparse.Namespace) -> list[AccessRecord]:
    if args.trace is not None:
        return list(to_access_records(read_trace(args.trace)))
    # ~5.4 requests per session-minute at the defaults: scale the session rate.
    per_hour_at_10 = 5400.0
    spm = 10.0 * args.requests / per_hour_at_10
    params = SynthParams(seed=args.seed, sessions_per_minute=spm, session_types=1)
    return list(to_access_records(synthesize(params)))


def _run_once(
    cfg: PredictorConfig, records: list[AccessRecord], tick_s: float
) -> tuple[float, int, int, int]:
    state = new_state(cfg)
    decisions = prefetches = 0
    next_tick = records[0].ts + tick_s
    gc.collect()
    start = time.perf_counter()
    for rec in records:
        if rec.ts >= next_tick:
            state, out = tick(state, next_tick)
            decisions += len(out)
            next_tick += tick_s
        state, out = step(state, rec)
        decisions += len(out)
        prefetches += sum(1 for o in out if type(o) is Prefetch)
    elapsed = time.perf_counter() - start
    size = len(orjson.dumps(state_to_dict(state)))
    return len(records) / elapsed, decisions, prefetches, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="synthetic trace size")
    parser.add_argument("--trace", type=Path, default=None, help="a trace.v1 JSONL file instead")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tick-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    records = _workload(args)
    if not records:
        print("empty workload", file=sys.stderr)
        return 2
    span = records[-1].ts - records[0].ts
    sessions = len({r.session for r in records})
    models = len({r.model for r in records})
    print(
        f"predictor core, one thread: {len(records)} records, {models} models, "
        f"{sessions} sessions, {span / 3600:.2f} h of trace, tick every {args.tick_s:g} s; "
        f"{args.repeats} interleaved repeats; Python {platform.python_version()} "
        f"on {platform.machine()}"
    )
    rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
    info: dict[str, tuple[int, int, int]] = {}
    for _ in range(args.repeats):
        for name, make in CONFIGS.items():
            rate, decisions, prefetches, size = _run_once(make(), records, args.tick_s)
            rates[name].append(rate)
            info[name] = (decisions, prefetches, size)

    base = statistics.median(rates[next(iter(CONFIGS))])
    header = (
        f"{'configuration':<46} {'events/s (median)':>18} {'min-max':>17} {'ratio':>6} "
        f"{'out/1k':>7} {'pf/1k':>6} {'state KiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, values in rates.items():
        med = statistics.median(values)
        decisions, prefetches, size = info[name]
        print(
            f"{name:<46} {med:>18,.0f} {min(values):>8,.0f}-{max(values):<8,.0f} "
            f"{med / base:>6.2f} {1000 * decisions / len(records):>7.1f} "
            f"{1000 * prefetches / len(records):>6.1f} {size / 1024:>10.1f}"
        )
    ok = base >= TARGET
    verdict = "PASS" if ok else "FAIL"
    print(f"target >= {TARGET:,.0f} events/s per core (default configuration): {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
