"""Which server / upstream client / framework should the bridge's hot path use?

Starts the simulator (``alb sim`` on ``bench/fleet.yaml``) and one minimal
pass-through proxy per candidate stack (``bench/candidates.py``), each in its own
process, then measures all of them and the simulator directly in interleaved
rounds from this process (the load generator, ``bench/loadgen.py``). Prints two
Markdown tables: non-streaming ``/api/chat`` (added latency p50/p99 at
concurrency 1 and 64, requests/s at 64) and streaming ``/api/chat`` (added TTFT
and inter-chunk gap at 1 and 64). "+ms" columns are proxied minus direct, paired
by round, median over rounds; the direct row shows absolute values.

    .venv/bin/python -m bench.proxy_candidates            # every default stack
    .venv/bin/python -m bench.proxy_candidates --rounds 3 \\
        --stacks uvicorn-httptools/httpx/starlette,uvicorn-httptools/aiohttp/starlette
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.candidates import parse_stack
from bench.harness import DIRECT, WORKLOADS, Results, Scenario, interleave, warm_up
from bench.loadgen import Target, new_event_loop
from bench.procs import HOST, REPO, Service, free_port, start_sim
from bench.report import load_note, ms, ratio, table

DEFAULT_STACKS = (
    "uvicorn-httptools/httpx/starlette",
    "uvicorn-h11/httpx/starlette",
    "uvicorn-asyncio/httpx/starlette",
    "granian/httpx/starlette",
    "uvicorn-httptools/httpx2/starlette",
    "uvicorn-httptools/httpx-aiohttp/starlette",
    "uvicorn-httptools/aiohttp/starlette",
    "uvicorn-httptools/httpx/fastapi",
    "uvicorn-httptools/aiohttp/asgi",
    "granian/aiohttp/starlette",
)


#: Wall time of one bench-stream reply (8 tokens at 100 tokens/s): the stagger at c=64.
STREAM_S = 0.08


def _scenarios(args: argparse.Namespace) -> list[Scenario]:
    plain, stream = WORKLOADS["native"], WORKLOADS["native-stream"]
    return [
        Scenario(plain, 1, args.n1),
        Scenario(plain, 64, args.n64),
        Scenario(stream, 1, args.streams1),
        Scenario(stream, 64, args.streams64, STREAM_S),
    ]


def _plain_table(res: Results, names: Sequence[str], scenarios: Sequence[Scenario]) -> str:
    c1, c64 = scenarios[0].name, scenarios[1].name
    rows = [
        [
            f"{DIRECT} (absolute)",
            ms(res.absolute(c1, DIRECT, "p50")),
            ms(res.absolute(c1, DIRECT, "p99")),
            ms(res.absolute(c64, DIRECT, "p50")),
            ms(res.absolute(c64, DIRECT, "p99")),
            f"{res.absolute(c64, DIRECT, 'rps'):.0f}",
            "1.00x",
        ]
    ]
    for n in names:
        rows.append(
            [
                n,
                "+" + ms(res.added(c1, n, "p50")),
                "+" + ms(res.added(c1, n, "p99")),
                "+" + ms(res.added(c64, n, "p50")),
                "+" + ms(res.added(c64, n, "p99")),
                f"{res.absolute(c64, n, 'rps'):.0f}",
                ratio(res.absolute(c64, n, "rps"), res.absolute(c64, DIRECT, "rps")),
            ]
        )
    header = ["stack", "c=1 p50", "c=1 p99", "c=64 p50", "c=64 p99", "c=64 req/s", "vs direct"]
    return table(header, rows)


def _stream_table(res: Results, names: Sequence[str], scenarios: Sequence[Scenario]) -> str:
    c1, c64 = scenarios[2].name, scenarios[3].name
    cols = [
        (c1, "ttft_p50"),
        (c1, "gap_p50"),
        (c1, "gap_p99"),
        (c64, "ttft_p50"),
        (c64, "ttft_p99"),
        (c64, "gap_p50"),
        (c64, "gap_p99"),
    ]
    rows = [[f"{DIRECT} (absolute)", *(ms(res.absolute(s, DIRECT, m)) for s, m in cols)]]
    rows += [[n, *("+" + ms(res.added(s, n, m)) for s, m in cols)] for n in names]
    header = [
        "stack",
        "c=1 TTFT p50",
        "c=1 gap p50",
        "c=1 gap p99",
        "c=64 TTFT p50",
        "c=64 TTFT p99",
        "c=64 gap p50",
        "c=64 gap p99",
    ]
    return table(header, rows)


async def _measure(
    urls: dict[str, int], scenarios: list[Scenario], rounds: int
) -> tuple[Results, dict[str, int]]:
    targets = [Target(name, HOST, port) for name, port in urls.items()]
    try:
        await warm_up(targets, scenarios)
        res = await interleave(
            targets, scenarios, rounds, lambda m: print(m, file=sys.stderr, flush=True)
        )
        return res, {t.name: res.errors(t.name) for t in targets}
    finally:
        for t in targets:
            t.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.proxy_candidates",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--stacks",
        default=",".join(DEFAULT_STACKS),
        help="comma-separated SERVER/CLIENT/APP stacks (see bench/candidates.py)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (%(default)s)")
    parser.add_argument("--n1", type=int, default=300, help="requests per c=1 batch")
    parser.add_argument("--n64", type=int, default=2000, help="requests per c=64 batch")
    parser.add_argument("--streams1", type=int, default=20, help="streams per c=1 batch")
    parser.add_argument("--streams64", type=int, default=192, help="streams per c=64 batch")
    parser.add_argument("--fleet", type=Path, default=REPO / "bench" / "fleet.yaml")
    args = parser.parse_args(argv)
    stacks = [s for s in args.stacks.split(",") if s]
    for s in stacks:
        parse_stack(s)
    scenarios = _scenarios(args)

    given = sys.argv[1:] if argv is None else list(argv)
    print(f"# python -m bench.proxy_candidates {shlex.join(given)}")
    print(f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}")
    print(f"# before: {load_note()}")

    services: list[Service] = []
    try:
        sim = start_sim(args.fleet)
        services.append(sim)
        ports = {DIRECT: sim.port}
        for stack in stacks:
            port = free_port()
            argv_ = [sys.executable, "-m", "bench.candidates", "--stack", stack]
            proxy = Service(stack, [*argv_, "--port", str(port), "--upstream", sim.url], port)
            services.append(proxy)
            proxy.wait_ready()
            ports[stack] = port
        loop = new_event_loop()
        try:
            res, errors = loop.run_until_complete(_measure(ports, scenarios, args.rounds))
        finally:
            loop.close()
    finally:
        for svc in reversed(services):
            svc.stop()

    print(f"# after: {load_note()}")
    print(f"# errors: {errors}")
    print()
    print(f"Non-streaming /api/chat: added latency (ms), medians of {args.rounds} rounds")
    print()
    print(_plain_table(res, stacks, scenarios))
    print()
    print(f"Streaming /api/chat (8 lines, 10 ms apart): added ms, medians of {args.rounds} rounds")
    print()
    print(_stream_table(res, stacks, scenarios))


if __name__ == "__main__":
    main()
