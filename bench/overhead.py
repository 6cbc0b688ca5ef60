"""The bridge's overhead: bridge versus direct-to-simulator, side by side in one run.

Starts the simulator (``bench/fleet.yaml``) and the bridge (``alb serve``, as
committed at ``--rev``) as child processes on free loopback ports, warms both
up, then measures them from this process (the load generator,
``bench/loadgen.py``) in interleaved rounds:

* non-streaming and streaming chat on the Ollama API (``/api/chat``) and the
  OpenAI API (``/v1/chat/completions``), at concurrency 1 and 64: latency (or,
  for streams, time to first token and the gap between chunks) p50 and p99.
  Non-streaming requests at concurrency 1 are answered at once (the pure
  per-request overhead); at concurrency 64 each reply takes 80 ms ("paced", as
  a short real completion would), so 64 clients offer a load the machine can
  carry instead of measuring who gets how much of two saturated cores. At
  concurrency 64 the connections' first requests are spread over one reply's
  duration, so the 64 clients do not arrive in lockstep waves;
* a concurrency sweep of non-streaming ``/api/chat``: requests/s and p99 at each
  step, and the highest requests/s whose p99 stays under ``--p99-budget-ms``.

Every "+" figure is bridge minus direct, paired within a round, median over
rounds; ratios are bridge / direct the same way. The issue's targets are
checked and printed as PASS / FAIL: at most 1 ms added at p50 with concurrency
1, at most 5 ms added at p99 with concurrency 64.

    .venv/bin/python -m bench.overhead                      # alb serve at HEAD
    .venv/bin/python -m bench.overhead --proxy-cmd \\
        '{python} -m bench.candidates --stack uvicorn-httptools/aiohttp/starlette \\
         --port {port} --upstream {upstream}'               # any other proxy
    .venv/bin/python -m bench.overhead --whatif no-gc-freeze   # plus a variant
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness import DIRECT, WORKLOADS, Results, Scenario, interleave, warm_up
from bench.loadgen import Target, new_event_loop
from bench.procs import HOST, REPO, Service, bridge_source, free_port, start_sim
from bench.report import load_note, ms, ratio, table

BRIDGE = "bridge"
#: Wall time of one bench-stream / bench-paced reply (8 tokens at 100 tokens/s): the
#: stagger at c=64, so 64 equally long requests do not start and end in lockstep
#: waves (which would measure 64 simultaneous arrivals, not a steady load).
STREAM_S = 0.08
P50_C1_TARGET_MS = 1.0
P99_C64_TARGET_MS = 5.0
#: What ``alb serve`` needs besides its settings: every package it may import.
#: Parallel slots of the daemon in bench/fleet.yaml; the bridge's per-daemon limit.
SIM_PARALLEL = 64


@dataclass(frozen=True)
class _Plan:
    main: list[Scenario]
    sweep: list[Scenario]


def _plan(args: argparse.Namespace) -> _Plan:
    main = []
    for api in ("native", "openai"):
        main += [
            Scenario(WORKLOADS[api], 1, args.n1),
            Scenario(WORKLOADS[f"{api}-paced"], 64, args.n64, STREAM_S),
            Scenario(WORKLOADS[f"{api}-stream"], 1, args.streams1),
            Scenario(WORKLOADS[f"{api}-stream"], 64, args.streams64, STREAM_S),
        ]
    # The sweep is where saturation is measured: instant replies, rising concurrency.
    steps = [int(c) for c in args.sweep.split(",") if c]
    sweep = [Scenario(WORKLOADS["native"], c, max(300, 40 * c)) for c in steps]
    return _Plan(main, sweep)


def _verdict(added_ms: float, target_ms: float) -> str:
    return "PASS" if added_ms <= target_ms else "FAIL"


def _latency_table(res: Results, scenarios: Sequence[Scenario]) -> tuple[str, list[str]]:
    """Latency (TTFT for streams) per scenario, with the target check; and FAIL lines."""
    rows, fails = [], []
    for s in scenarios:
        stream = s.workload.frame_sep is not None
        p50, p99 = ("ttft_p50", "ttft_p99") if stream else ("p50", "p99")
        if s.concurrency == 1:
            metric, target = p50, P50_C1_TARGET_MS
        else:
            metric, target = p99, P99_C64_TARGET_MS
        added = res.added(s.name, BRIDGE, metric) * 1e3
        verdict = _verdict(added, target)
        label = f"+{'p50' if metric == p50 else 'p99'} <= {target:g} ms"
        if verdict == "FAIL":
            fails.append(f"{s.name}: {added:.2f} ms added ({label})")
        rows.append(
            [
                s.name + (" (TTFT)" if stream else ""),
                ms(res.absolute(s.name, DIRECT, p50)),
                ms(res.absolute(s.name, BRIDGE, p50)),
                "+" + ms(res.added(s.name, BRIDGE, p50)),
                ratio(res.absolute(s.name, BRIDGE, p50), res.absolute(s.name, DIRECT, p50)),
                ms(res.absolute(s.name, DIRECT, p99)),
                ms(res.absolute(s.name, BRIDGE, p99)),
                "+" + ms(res.added(s.name, BRIDGE, p99)),
                f"{verdict} ({label})",
            ]
        )
    header = [
        "scenario",
        "direct p50",
        "bridge p50",
        "added p50",
        "ratio p50",
        "direct p99",
        "bridge p99",
        "added p99",
        "target",
    ]
    return table(header, rows), fails


def _gap_table(res: Results, scenarios: Sequence[Scenario]) -> str:
    rows = [
        [
            s.name,
            ms(res.absolute(s.name, DIRECT, "gap_p50")),
            "+" + ms(res.added(s.name, BRIDGE, "gap_p50")),
            ms(res.absolute(s.name, DIRECT, "gap_p99")),
            "+" + ms(res.added(s.name, BRIDGE, "gap_p99")),
            ms(res.absolute(s.name, DIRECT, "p50")),
            "+" + ms(res.added(s.name, BRIDGE, "p50")),
        ]
        for s in scenarios
        if s.workload.frame_sep is not None
    ]
    header = [
        "stream",
        "direct gap p50",
        "added gap p50",
        "direct gap p99",
        "added gap p99",
        "direct whole stream p50",
        "added",
    ]
    return table(header, rows)


def _sweep_table(res: Results, sweep: Sequence[Scenario], budget_s: float) -> tuple[str, str]:
    rows = []
    best: dict[str, tuple[float, int]] = {DIRECT: (0.0, 0), BRIDGE: (0.0, 0)}
    for s in sweep:
        row = [str(s.concurrency)]
        for who in (DIRECT, BRIDGE):
            rps, p99 = res.absolute(s.name, who, "rps"), res.absolute(s.name, who, "p99")
            row += [f"{rps:.0f}", ms(p99)]
            if p99 < budget_s and rps > best[who][0]:
                best[who] = (rps, s.concurrency)
        row.append(ratio(res.absolute(s.name, BRIDGE, "rps"), res.absolute(s.name, DIRECT, "rps")))
        rows.append(row)
    header = ["concurrency", "direct req/s", "direct p99", "bridge req/s", "bridge p99", "ratio"]
    (d_rps, d_c), (b_rps, b_c) = best[DIRECT], best[BRIDGE]
    summary = (
        f"Highest req/s with p99 < {budget_s * 1e3:g} ms: direct {d_rps:.0f} (c={d_c}), "
        f"bridge {b_rps:.0f} (c={b_c}), ratio {ratio(b_rps, d_rps)}"
    )
    return table(header, rows), summary


def _start_proxy(
    args: argparse.Namespace, upstream: str, patches: str = "", base: str | None = None
) -> Service:
    """The proxy under test; with ``patches``, ``alb serve`` under ``bench.bridge_whatif``;
    with ``base``, ``alb serve`` as committed at that revision."""
    port = free_port()
    env = dict(kv.split("=", 1) for kv in args.proxy_env)
    name = f"{BRIDGE}+{patches}" if patches else f"{BRIDGE}@{base}" if base else BRIDGE
    rev = base or args.rev
    if args.proxy_cmd and base is None:
        cmd = args.proxy_cmd.format(python=sys.executable, port=port, upstream=upstream)
        proxy = Service(name, shlex.split(cmd), port, env=env)
    else:
        src, cli = bridge_source(rev)
        env = {
            "ALB_DAEMONS": f"bench0={upstream}?parallel={SIM_PARALLEL}",
            "OLLAMA_HOST": upstream,
            **env,
        }
        serve = ["serve", "--host", HOST, "--port", str(port)]
        if patches:
            argv = [sys.executable, "-m", "bench.bridge_whatif", "--patch", patches, *serve]
        else:
            argv = [sys.executable, "-m", cli, *serve]
        proxy = Service(name, argv, port, env=env, cwd=src, owns_cwd=src != REPO)
    proxy.wait_ready(args.ready_path, timeout=60)
    return proxy


def _whatif_table(res: Results, scenarios: Sequence[Scenario], names: Sequence[str]) -> str:
    """Added p50 / p99 (TTFT for streams) of the bridge and each patched variant."""
    rows = []
    for s in scenarios:
        stream = s.workload.frame_sep is not None
        p50, p99 = ("ttft_p50", "ttft_p99") if stream else ("p50", "p99")
        row = [s.name + (" (TTFT)" if stream else "")]
        for n in names:
            row += ["+" + ms(res.added(s.name, n, p50)), "+" + ms(res.added(s.name, n, p99))]
        rows.append(row)
    for s in scenarios[-1:]:
        row = [f"req/s, {s.name}"]
        for n in names:
            row += [f"{res.absolute(s.name, n, 'rps'):.0f}", ""]
        rows.append(row)
    header = ["scenario"]
    for n in names:
        header += [f"{n} p50", f"{n} p99"]
    return table(header, rows)


async def _measure(ports: dict[str, int], plan: _Plan, rounds: int) -> Results:
    targets = [Target(name, HOST, port) for name, port in ports.items()]
    try:
        await warm_up(targets, plan.main)
        return await interleave(
            targets,
            [*plan.main, *plan.sweep],
            rounds,
            lambda m: print(m, file=sys.stderr, flush=True),
        )
    finally:
        for t in targets:
            t.close()


def _describe_proxy(args: argparse.Namespace) -> str:
    if args.proxy_cmd:
        return f"proxy command: {args.proxy_cmd}"
    rev = args.rev
    if rev != "worktree":
        out = subprocess.run(
            ["git", "log", "-1", "--format=%h %s", rev, "--", "bridge"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        rev = out.stdout.strip() or rev
    return f"bridge: alb serve at {rev}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--proxy-cmd",
        help="run this instead of alb serve; {python}, {port} and {upstream} are filled in",
    )
    parser.add_argument(
        "--rev", default="HEAD", help="git revision of the bridge to run, or 'worktree'"
    )
    parser.add_argument(
        "--proxy-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the proxy (repeatable)",
    )
    parser.add_argument(
        "--whatif",
        action="append",
        default=[],
        metavar="PATCHES",
        help="also measure alb serve with these bench/bridge_whatif.py patches "
        "(comma-separated, e.g. no-gc-freeze; repeatable)",
    )
    parser.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="REV",
        help="also measure alb serve as committed at REV in the same rounds (repeatable)",
    )
    parser.add_argument("--ready-path", default="/api/version", help="GET that answers 200")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (%(default)s)")
    parser.add_argument("--n1", type=int, default=300, help="requests per c=1 batch")
    parser.add_argument("--n64", type=int, default=640, help="requests per c=64 batch")
    parser.add_argument("--streams1", type=int, default=20, help="streams per c=1 batch")
    parser.add_argument("--streams64", type=int, default=192, help="streams per c=64 batch")
    parser.add_argument(
        "--sweep", default="1,2,4,8,16,32,64", help="concurrency steps of the req/s sweep"
    )
    parser.add_argument("--p99-budget-ms", type=float, default=10.0)
    parser.add_argument("--fleet", type=Path, default=REPO / "bench" / "fleet.yaml")
    args = parser.parse_args(argv)
    plan = _plan(args)

    given = sys.argv[1:] if argv is None else list(argv)
    print(f"# python -m bench.overhead {shlex.join(given)}")
    print(f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}")
    print(f"# {_describe_proxy(args)}")
    print(f"# before: {load_note()}")
    services: list[Service] = []
    try:
        sim = start_sim(args.fleet)
        services.append(sim)
        ports = {DIRECT: sim.port}
        for patches in ["", *args.whatif]:
            proxy = _start_proxy(args, sim.url, patches)
            services.append(proxy)
            ports[proxy.name] = proxy.port
        for base in args.base:
            proxy = _start_proxy(args, sim.url, base=base)
            services.append(proxy)
            ports[proxy.name] = proxy.port
        loop = new_event_loop()
        try:
            res = loop.run_until_complete(_measure(ports, plan, args.rounds))
        finally:
            loop.close()
    finally:
        for svc in reversed(services):
            svc.stop()
    print(f"# after: {load_note()}")
    print(f"# errors: direct {res.errors(DIRECT)}, bridge {res.errors(BRIDGE)}")
    print()
    latency, fails = _latency_table(res, plan.main)
    print(f"Latency in ms (streams: time to first token), medians of {args.rounds} rounds")
    print()
    print(latency)
    print()
    print("Streams (8 chunks, 10 ms apart): inter-chunk gap and whole stream, ms")
    print()
    print(_gap_table(res, plan.main))
    print()
    sweep, summary = _sweep_table(res, plan.sweep, args.p99_budget_ms / 1e3)
    print("Non-streaming /api/chat, concurrency sweep (closed loop)")
    print()
    print(sweep)
    print()
    print(summary)
    print()
    verdict = "FAIL" if fails or res.errors(BRIDGE) else "PASS"
    print(f"Targets: {verdict}" + "".join(f"\n  FAIL {f}" for f in fails))
    if res.errors(BRIDGE):
        print(f"  FAIL {res.errors(BRIDGE)} requests through the bridge did not answer 200")
    if args.whatif:
        variants = [BRIDGE, *(f"{BRIDGE}+{p}" for p in args.whatif)]
        print()
        print("What if (bench/bridge_whatif.py): added ms, same rounds, medians")
        print()
        print(_whatif_table(res, [*plan.main, plan.sweep[-1]], variants))
        print("# errors: " + ", ".join(f"{n} {res.errors(n)}" for n in variants))
    if args.base:
        variants = [BRIDGE, *(f"{BRIDGE}@{b}" for b in args.base)]
        print()
        print(f"Revisions, same rounds: added ms, medians ({BRIDGE} = {args.rev})")
        print()
        print(_whatif_table(res, [*plan.main, plan.sweep[-1]], variants))
        print("# errors: " + ", ".join(f"{n} {res.errors(n)}" for n in variants))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
