"""Where a policy's memory goes on a replayed trace (a program, not a test).

    .venv/bin/python -m bench.idle_anatomy --trace T.jsonl --fleet F.yaml [--policies a,b]
    .venv/bin/python -m bench.idle_anatomy --synth-seed 1 --fleet F.yaml

For each policy, the runners' bytes integrated over the replay (GB·h), split by what each
runner was doing: serving (a request in flight or queued on it), loading, idle; and the
idle memory split by how each idle spell ended: the runner served again (``reused``),
was evicted for another load, unloaded by its keep-alive (``expired``), replaced by a
reload at another context, or the trace ended. ``ours-lean=P`` is ``ours`` with
``unload_below = P``. Same inputs, same numbers (the replay is deterministic).
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

from predictor.traces.synth import SynthParams, synthesize
from replay.des import Runner, Simulation
from replay.fleets import load_fleet
from replay.policies import POLICIES, PolicySpec
from replay.simulate import new_simulation
from replay.workload import Request, load_requests, requests_from_records

GB_H = 1e9 * 3600
STATES = ("serving", "loading", "idle")
ENDS = ("reused", "evicted", "expired", "reloaded", "end")


class Anatomy:
    """The simulation's observer: integrates runner bytes by state between events and
    closes idle spells as they end."""

    def __init__(self) -> None:
        self.byte_s: defaultdict[str, float] = defaultdict(float)
        self.spells: Counter[str] = Counter()
        self._last_t = 0.0
        self._state: dict[int, tuple[Runner, str]] = {}
        self._idle_since: dict[int, float] = {}
        self._tally = (0, 0, 0)

    def __call__(self, sim: Simulation) -> None:
        now = sim.now
        for r, state in self._state.values():
            self.byte_s[state] += r.size * (now - self._last_t)
        self._last_t = now
        t = sim.tally
        tally = (t.idle_unloads, t.evictions, t.reloads)
        causes = zip(("expired", "evicted", "reloaded"), tally, self._tally, strict=True)
        gone = next((cause for cause, a, b in causes if a > b), "evicted")
        self._tally = tally
        current = {}
        for r in sim.controller.runners():
            state = "loading" if not r.ready else ("idle" if r.idle else "serving")
            current[id(r)] = (r, state)
        for rid, since in list(self._idle_since.items()):
            ended = gone if rid not in current else ("reused" if current[rid][1] != "idle" else "")
            if ended:
                r = self._state[rid][0]
                self.byte_s[f"idle:{ended}"] += r.size * (now - since)
                self.spells[ended] += 1
                del self._idle_since[rid]
        for rid, (_r, state) in current.items():
            if state == "idle" and rid not in self._idle_since:
                self._idle_since[rid] = now
        self._state = current

    def finish(self, now: float) -> None:
        for rid, since in self._idle_since.items():
            self.byte_s["idle:end"] += self._state[rid][0].size * (now - since)
            self.spells["end"] += 1


def _spec(name: str) -> PolicySpec:
    if name.startswith("ours-lean="):
        ours = POLICIES["ours"]
        assert ours.predictor is not None
        value = float(name.split("=", 1)[1])
        return replace(ours, name=name, predictor=ours.predictor.replace(unload_below=value))
    return POLICIES[name]


def row(fleet_path: Path, spec: PolicySpec, requests: list[Request]) -> str:
    anatomy = Anatomy()
    sim = new_simulation(load_fleet(fleet_path), spec, requests, observer=anatomy)
    report = sim.run()
    anatomy.finish(sim.now)
    b = anatomy.byte_s
    resident = sum(b[s] for s in STATES)
    cells = [
        f"{report.cold_start_rate:.1%}",
        f"{resident / GB_H:.1f}",
        *(f"{b[s] / GB_H:.1f}" for s in STATES),
        *(f"{b['idle:' + e] / GB_H:.1f} ({anatomy.spells[e]})" for e in ENDS),
    ]
    return f"| {spec.name} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", type=Path)
    source.add_argument("--synth-seed", type=int)
    parser.add_argument("--sessions-per-minute", type=float, default=5.0)
    parser.add_argument("--fleet", type=Path, required=True)
    parser.add_argument("--policies", default="ollama,bridge-lru,ours")
    args = parser.parse_args(argv)
    if args.trace is not None:
        requests = load_requests(args.trace, None)
    else:
        params = SynthParams(seed=args.synth_seed, sessions_per_minute=args.sessions_per_minute)
        requests = requests_from_records(synthesize(params))
    head = ["policy", "cold", "resident", *STATES, *(f"idle, then {e} (spells)" for e in ENDS)]
    print("GB·h\n\n| " + " | ".join(head) + " |\n|" + " --- |" + " ---: |" * (len(head) - 1))
    for name in args.policies.split(","):
        print(row(args.fleet, _spec(name), requests), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
