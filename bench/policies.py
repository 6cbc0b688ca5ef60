"""The five policies on one replayed trace, side by side (a program, not a test).

    .venv/bin/python -m bench.policies --trace T.jsonl --fleet F.yaml [--limit N] [--json OUT]

Prints one Markdown table (policy x metrics) from a single run of the deterministic
replay (``predictor.replay``): Ollama's defaults, the bridge with its recency/LRU
eviction and no prediction, the seed article's predictor, the hybrid histogram alone,
and ours. Same inputs, same numbers: nothing here is timed or random.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from predictor.replay.des import simulate
from predictor.replay.fleets import load_fleet
from predictor.replay.policies import POLICIES
from predictor.replay.report import markdown_table
from predictor.replay.workload import load_requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, required=True)
    parser.add_argument("--fleet", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    requests = load_requests(args.trace, args.limit)
    fleet = load_fleet(args.fleet)
    reports = []
    for name in args.policies.split(","):
        t0 = time.perf_counter()
        reports.append(simulate(fleet, POLICIES[name], requests))
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(f"{len(requests)} requests, {args.trace.name}, fleet {args.fleet.name}\n")
    print(markdown_table(reports))
    if args.json is not None:
        args.json.write_text(json.dumps([r.as_dict() for r in reports], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
