"""What anonymous clients can make ``alb serve`` hold: memory after large bodies, idle sockets.

Starts the simulator (``bench/fleet.yaml``) and ``alb serve`` (as committed at
``--rev``, default the working tree) as child processes on free loopback ports, then,
from this process:

* **large bodies**: ``--bursts`` bursts of ``--bodies`` concurrent ``--body-mib`` MiB
  request bodies on ``/api/generate`` (invalid JSON by default, so every admitted
  one is a 400, as in the probe of issue #12; ``--valid-json``: an object with one
  huge unknown field). The bridge's RSS (``/proc/<pid>/status``) is sampled every
  20 ms: its baseline after a warm-up, the peak during each burst and the value
  ``--settle`` seconds after it, with the ratio after / baseline (target ≤ 1.5x) and
  the answers' status codes (413 / 503 are the limits refusing; ``reset``: the
  connection closed before an answer);
* **idle sockets**: ``--idle`` connections that never send a byte, opened at once;
  how long until the bridge has closed all of them (with ``ALB_HEADER_TIMEOUT`` =
  ``--header-timeout``), while a probe ``GET /api/version`` every 100 ms keeps
  being answered (its worst latency and failures are printed).

    .venv/bin/python -m bench.exhaustion                         # the working tree
    .venv/bin/python -m bench.exhaustion --rev HEAD~3 --idle 0   # an older revision
    .venv/bin/python -m bench.exhaustion --env ALB_BODY_BUDGET_BYTES=1073741824

Extra ``--env NAME=VALUE`` pairs go to ``alb serve`` (e.g. the budget above, so every
body of a burst is admitted and the memory it leaves is measured, not refused).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import platform
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.procs import HOST, REPO, Service, bridge_source, free_port, start_sim
from bench.report import load_note, table

MIB = 1024 * 1024
RSS_TARGET = 1.5


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def body_of(size: int, valid_json: bool) -> bytes:
    if not valid_json:
        return b"A" * size
    head = b'{"model":"bench-fast","prompt":"hi","x":"'
    return head + b"a" * (size - len(head) - 2) + b'"}'


async def post(port: int, path: str, body: bytes) -> str:
    """Send ``body`` and return the answer's status ("reset" when there was none)."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return "connect-failed"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()

    async def send_all() -> None:
        writer.write(head)
        view = memoryview(body)
        for i in range(0, len(body), MIB):
            writer.write(view[i : i + MIB])
            await writer.drain()

    sender = asyncio.create_task(send_all())
    try:
        status_line = await reader.readline()
        return status_line.split(b" ", 2)[1].decode() if status_line else "reset"
    except (ConnectionError, IndexError):
        return "reset"
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        writer.close()


@dataclass
class Burst:
    codes: Counter[str] = field(default_factory=Counter)
    peak: int = 0
    after: int = 0
    seconds: float = 0.0


async def burst(pid: int, port: int, body: bytes, n: int, settle: float) -> Burst:
    out = Burst()
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            out.peak = max(out.peak, rss(pid))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    t0 = time.monotonic()
    codes = await asyncio.gather(*(post(port, "/api/generate", body) for _ in range(n)))
    out.seconds = time.monotonic() - t0
    await asyncio.sleep(settle)
    done.set()
    await sampler
    out.codes.update(codes)
    out.after = rss(pid)
    return out


async def probe_loop(port: int, stop: asyncio.Event, latencies: list[float]) -> int:
    """``GET /api/version`` every 100 ms until ``stop``; returns the failures."""
    failures = 0
    request = f"GET /api/version HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection(HOST, port)
                writer.write(request.encode())
                line = await reader.readline()
                await reader.read()
                writer.close()
            if b" 200 " not in line:
                failures += 1
        except (OSError, TimeoutError):
            failures += 1
        latencies.append(time.monotonic() - t0)
        await asyncio.sleep(0.1)
    return failures


@dataclass
class IdleResult:
    opened: int
    closed: int
    first_s: float
    last_s: float
    probes: int
    probe_failures: int
    probe_max_s: float


async def idle_sockets(port: int, n: int, wait: float) -> IdleResult:
    """Open ``n`` silent connections; time until the bridge closed them."""
    conns = []
    for _ in range(n):
        with contextlib.suppress(OSError):
            conns.append(await asyncio.open_connection(HOST, port))
    t0 = time.monotonic()
    closed_at: list[float] = []

    async def wait_closed(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()
        closed_at.append(time.monotonic() - t0)

    stop = asyncio.Event()
    latencies: list[float] = []
    prober = asyncio.create_task(probe_loop(port, stop, latencies))
    waiters = [asyncio.create_task(wait_closed(r)) for r, _ in conns]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            await asyncio.gather(*waiters)
    stop.set()
    failures = await prober
    for w in waiters:
        w.cancel()
    for _, writer in conns:
        writer.close()
    return IdleResult(
        opened=len(conns),
        closed=len(closed_at),
        first_s=min(closed_at, default=float("nan")),
        last_s=max(closed_at, default=float("nan")),
        probes=len(latencies),
        probe_failures=failures,
        probe_max_s=max(latencies, default=float("nan")),
    )


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


async def run(args: argparse.Namespace) -> int:
    sim = start_sim(REPO / "bench" / "fleet.yaml", rev="worktree")
    src, cli = bridge_source(args.rev)
    port = free_port()
    env = {
        "ALB_DAEMONS": f"bench0={sim.url}?parallel=64",
        "ALB_HEADER_TIMEOUT": str(args.header_timeout),
        **dict(kv.split("=", 1) for kv in args.env),
    }
    argv = [sys.executable, "-m", cli, "serve", "--host", HOST, "--port", str(port)]
    bridge = Service("bridge", argv, port, env=env, cwd=src, owns_cwd=src != REPO)
    try:
        bridge.wait_ready("/api/version", timeout=60)
        pid = bridge.proc.pid
        for _ in range(20):  # warm-up: imports, first requests
            await post(port, "/api/show", b'{"model":"bench-fast"}')
        await asyncio.sleep(1.0)
        baseline = rss(pid)
        python = platform.python_version()
        print(f"alb serve ({args.rev}), Python {python}; {load_note()}; {dt.date.today()}")
        print(f"env: {' '.join(f'{k}={v}' for k, v in env.items() if k != 'ALB_DAEMONS')}\n")
        rows = []
        body = body_of(args.body_mib * MIB, args.valid_json)
        worst = 0.0
        for i in range(args.bursts):
            b = await burst(pid, port, body, args.bodies, args.settle)
            worst = max(worst, b.after / baseline)
            codes = ", ".join(f"{c} x{n}" for c, n in sorted(b.codes.items()))
            rows.append(
                [
                    str(i + 1),
                    codes,
                    f"{b.seconds:.2f}",
                    f"{baseline / 1e6:.0f}",
                    f"{b.peak / 1e6:.0f}",
                    f"{b.after / 1e6:.0f}",
                    f"{b.after / baseline:.2f}x",
                ]
            )
        if args.bursts:
            head = ["burst", "answers", "s", "baseline MB", "peak MB", "after MB", "after/base"]
            what = f"{args.bodies} concurrent {args.body_mib} MiB bodies"
            print(f"{what}, RSS {args.settle:g} s after each burst")
            print(table(head, rows))
            verdict = "PASS" if worst <= RSS_TARGET else "FAIL"
            print(f"\nworst after/baseline {worst:.2f}x (target <= {RSS_TARGET}x): {verdict}\n")
        if args.idle:
            _raise_fd_limit(args.idle * 2 + 256)
            r = await idle_sockets(port, args.idle, args.header_timeout * 3 + 10)
            print(
                f"{r.opened} idle sockets: {r.closed} closed by the bridge, the first after "
                f"{r.first_s:.2f} s, the last after {r.last_s:.2f} s "
                f"(ALB_HEADER_TIMEOUT={args.header_timeout:g}); probe GET /api/version: "
                f"{r.probes} answered in at most {r.probe_max_s * 1e3:.0f} ms, "
                f"{r.probe_failures} failed"
            )
            ok = r.closed == r.opened and r.last_s <= args.header_timeout + 2
            print(f"all closed within the header timeout (+2 s): {'PASS' if ok else 'FAIL'}")
    finally:
        bridge.stop()
        sim.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="worktree", help="git revision of alb serve")
    parser.add_argument("--bodies", type=int, default=40)
    parser.add_argument("--body-mib", type=int, default=16)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--valid-json", action="store_true")
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--header-timeout", type=float, default=2.0)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
