"""The five policies on replayed traces, side by side (a program, not a test).

    .venv/bin/python -m bench.policies --trace T.jsonl --fleet F.yaml [--limit N] [--json OUT]
    .venv/bin/python -m bench.policies --synth-seeds 1-12 --sessions-per-minute 5 --fleet F.yaml

With ``--trace``: one Markdown table (policy x metrics) from a single run of the
deterministic replay (``replay``): Ollama's defaults, the bridge with its
recency/LRU eviction and no prediction, the seed article's predictor, the hybrid
histogram alone, and ours. With ``--synth-seeds``: the synthetic trace of each seed
(``alb trace synth --seed N``), every policy on each, then one table per metric
(cold-start rate, p99 latency, idle GB·h) with a column per seed and the mean, and
how many seeds ours wins (lowest cold-start rate and p99 of all policies, idle memory
at most Ollama's). ``--lean P`` adds the row ``ours-lean``: ours with
``unload_below = P`` (idle runners whose P(reuse) is below P unloaded at once);
``--lean P1,P2,...`` a row per value. ``--eviction per-byte`` is a what-if, not the
bridge: every bridge policy ranks its eviction victims by predicted reuse x reload cost
*per byte* (``bridge.policy.placement.eviction_value`` replaced for the run), to measure what a
size-aware value would change.
Same inputs, same numbers: nothing here is timed or random.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import bridge.events.prefetch_consumer as prefetch
import bridge.policy.placement as placement
import replay.bridge_fleet as replay_bridge
from bridge.policy.placement import ReuseOracle, RunnerView
from predictor.traces.synth import SynthParams, synthesize
from replay.fleets import load_fleet
from replay.policies import POLICIES, PolicySpec
from replay.report import ReplayReport, markdown_table
from replay.simulate import simulate
from replay.workload import Request, load_requests, requests_from_records

METRICS = (
    ("cold", "cold_start_rate", "{:.1%}"),
    ("p99 s", "p99_latency_s", "{:.0f}"),
    ("idle GB·h", "idle_gb_h", "{:.1f}"),
)


def _per_byte(oracle: ReuseOracle, daemon: str, runner: RunnerView) -> float:
    """What-if eviction value: reuse x reload cost per GB held."""
    return oracle.reuse(daemon, runner) * max(runner.reload_s, 0.001) * 1e9 / max(runner.size, 1)


def _use_eviction_value(fn: Callable[[ReuseOracle, str, RunnerView], float]) -> None:
    """Make every caller of ``eviction_value`` the replay reaches use ``fn``."""
    for module in (placement, replay_bridge, prefetch):
        module.eviction_value = fn  # type: ignore[attr-defined]


def _specs(names: str, lean: str | None) -> list[PolicySpec]:
    specs = [POLICIES[n] for n in names.split(",")]
    values = [] if lean is None else [float(v) for v in lean.split(",")]
    ours = POLICIES["ours"]
    assert ours.predictor is not None
    for v in values:
        name = "ours-lean" if len(values) == 1 else f"ours-lean={v:g}"
        specs.append(replace(ours, name=name, predictor=ours.predictor.replace(unload_below=v)))
    return specs


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def _wins(name: str, per_seed: list[dict[str, ReplayReport]]) -> dict[str, int]:
    """Seeds on which ``name`` has the lowest cold-start rate / p99 of the five (ties
    count) and idle memory at most Ollama's."""
    wins = {"cold": 0, "p99": 0, "idle": 0, "all three": 0}
    for reports in per_seed:
        me = reports[name]
        others = [r for n, r in reports.items() if n != name and not n.startswith("ours")]
        cold = me.cold_start_rate <= min(r.cold_start_rate for r in others)
        p99 = me.p99_latency_s <= min(r.p99_latency_s for r in others)
        idle = me.idle_gb_h <= reports["ollama"].idle_gb_h
        wins["cold"] += cold
        wins["p99"] += p99
        wins["idle"] += idle
        wins["all three"] += cold and p99 and idle
    return wins


def _seed_tables(args: argparse.Namespace, specs: list[PolicySpec]) -> None:
    fleet = load_fleet(args.fleet)
    seeds = _seeds(args.synth_seeds)
    per_seed: list[dict[str, ReplayReport]] = []
    for seed in seeds:
        params = SynthParams(seed=seed, sessions_per_minute=args.sessions_per_minute)
        requests: list[Request] = requests_from_records(synthesize(params))
        per_seed.append({s.name: simulate(fleet, s, requests) for s in specs})
        print(f"seed {seed}: {len(requests)} requests", file=sys.stderr)
    print(
        f"synthetic seeds {seeds[0]}-{seeds[-1]}, {args.sessions_per_minute} sessions/min, "
        f"fleet {args.fleet.name}\n"
    )
    head = "| policy | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |"
    rule = "| --- |" + " ---: |" * (len(seeds) + 1)
    for label, field, fmt in METRICS:
        print(f"{label}:\n\n{head}\n{rule}")
        for s in specs:
            values = [getattr(r[s.name], field) for r in per_seed]
            cells = " | ".join(fmt.format(v) for v in values)
            print(f"| {s.name} | {cells} | {fmt.format(statistics.mean(values))} |")
        print()
    for name in [s.name for s in specs if s.name.startswith("ours")]:
        wins = _wins(name, per_seed)
        print(
            f"{name}, seeds won of {len(seeds)}: " + ", ".join(f"{k} {v}" for k, v in wins.items())
        )
    if args.json is not None:
        rows = [{n: r.as_dict() for n, r in reports.items()} for reports in per_seed]
        args.json.write_text(json.dumps({"seeds": seeds, "reports": rows}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", type=Path)
    source.add_argument("--synth-seeds", help="e.g. 1-12 or 1,3,5")
    parser.add_argument("--sessions-per-minute", type=float, default=5.0)
    parser.add_argument("--fleet", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument(
        "--lean", default=None, help="add ours-lean rows: unload_below values, e.g. 0.2 or 0.1,0.3"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--eviction",
        choices=("value", "per-byte"),
        default="value",
        help="what-if: per-byte ranks victims by reuse x reload cost per byte (not the bridge)",
    )
    args = parser.parse_args(argv)
    if args.eviction == "per-byte":
        _use_eviction_value(_per_byte)
    specs = _specs(args.policies, args.lean)
    if args.synth_seeds is not None:
        _seed_tables(args, specs)
        return 0
    requests = load_requests(args.trace, args.limit)
    fleet = load_fleet(args.fleet)
    reports = []
    for spec in specs:
        t0 = time.perf_counter()
        reports.append(simulate(fleet, spec, requests))
        print(f"{spec.name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(f"{len(requests)} requests, {args.trace.name}, fleet {args.fleet.name}\n")
    print(markdown_table(reports))
    if args.json is not None:
        args.json.write_text(json.dumps([r.as_dict() for r in reports], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
