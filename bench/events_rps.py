"""Bridge requests/s with event logging off, on Kafka, and embedded, side by side.

Starts the simulator (``bench/fleet.yaml``, its own process) and three ``alb serve``
processes (as committed at ``--rev``) in front of it:

* ``off``: ``ALB_EVENTS=false`` (no access log, no consumer);
* ``kafka``: ``ALB_KAFKA_BOOTSTRAP_SERVERS`` set: every request's access-log event
  goes through the sender to a real broker (``acks=all``, lz4), the consumer group
  polls the prefetch / warm-cache topics;
* ``embedded``: the default (in-process bus, no Kafka).

Then measures them from this process in interleaved rounds (the order rotates each
round): closed-loop non-streaming ``/api/chat`` with an ``X-ALB-Session`` header at
``--concurrency`` (instant replies: the saturation req/s, where logging costs show
most) and ``bench-paced`` at concurrency 64 (80 ms replies: a steady load). Ratios
are paired within a round (kafka / off), medians over rounds. The target (issue #5):
Kafka logging costs at most 5 % of the saturation req/s. After the rounds the Kafka
bridge's ``/metrics`` must show every request's event sent and none spooled or dropped.
``--base REV`` adds a fourth bridge, ``kafka-base``: the Kafka one at another revision,
measured in the same interleaved rounds (a before / after of the logging path).

The broker: ``--kafka HOST:PORT`` or ``KAFKA_BOOTSTRAP_SERVERS``, else a local
Kafka 4.0 JVM broker started through the test harness (``tests/services``).

    .venv/bin/python -m bench.events_rps
    .venv/bin/python -m bench.events_rps --rounds 7 --total 3000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import re
import shlex
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.harness import Results, Scenario, _chat, interleave, warm_up
from bench.loadgen import BatchResult, Target, Workload, new_event_loop
from bench.procs import HOST, REPO, Service, bridge_source, free_port, start_sim
from bench.report import load_note, median, table

#: What ``alb serve`` imports.
SIM_PARALLEL = 64
OFF, KAFKA, EMBEDDED, BASE = "off", "kafka", "embedded", "kafka-base"
TARGET_RATIO = 0.95


@dataclass(frozen=True)
class SessionWorkload(Workload):
    """A workload whose requests carry ``X-ALB-Session`` (the access log's key)."""

    session: str = "bench-session"

    def request_bytes(self, host: str, port: int) -> bytes:
        raw = super().request_bytes(host, port)
        return raw.replace(b"\r\n\r\n", f"\r\nX-ALB-Session: {self.session}\r\n\r\n".encode(), 1)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (the Kafka bridge's event shipper)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _children_cpu_s(pid: int) -> float:
    total = 0.0
    for child in _children(pid):
        with contextlib.suppress(OSError):
            total += _cpu_s(child)
    return total


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


class MeteredTarget(Target):
    """A target that also measures, per batch, the CPU its bridge process (and the
    broker) spent per answered request."""

    def __init__(self, name: str, port: int, pid: int, broker_pid: int | None) -> None:
        super().__init__(name, HOST, port)
        self._pids = (pid, broker_pid)
        #: (scenario workload name, bridge µs/request, broker µs/request, µs/request of
        #: the bridge's child processes: the event shipper) per batch.
        self.cpu: list[tuple[str, float, float, float]] = []

    async def run(
        self, workload: Workload, concurrency: int, total: int, stagger: float = 0.0
    ) -> BatchResult:
        pid, broker = self._pids
        before = (_cpu_s(pid), _cpu_s(broker) if broker else 0.0, _children_cpu_s(pid))
        result = await super().run(workload, concurrency, total, stagger)
        after = (_cpu_s(pid), _cpu_s(broker) if broker else 0.0, _children_cpu_s(pid))
        n = max(len(result.latencies), 1)
        self.cpu.append(
            (
                workload.name,
                (after[0] - before[0]) / n * 1e6,
                (after[1] - before[1]) / n * 1e6,
                (after[2] - before[2]) / n * 1e6,
            )
        )
        return result


def _bridge(name: str, upstream: str, rev: str, env: dict[str, str]) -> Service:
    port = free_port()
    src, cli = bridge_source(rev)
    full = {
        "ALB_DAEMONS": f"bench0={upstream}?parallel={SIM_PARALLEL}",
        "OLLAMA_HOST": upstream,
        **env,
    }
    argv = [sys.executable, "-m", cli, "serve", "--host", HOST, "--port", str(port)]
    svc = Service(name, argv, port, env=full, cwd=src, owns_cwd=src != REPO)
    svc.wait_ready("/api/version", timeout=60)
    return svc


def _kafka(args: argparse.Namespace) -> tuple[str, object | None]:
    given = args.kafka or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        return given, None
    from tests.services import kafka_broker  # noqa: PLC0415  (a bench-only convenience)

    broker = kafka_broker.start()
    return broker.bootstrap, broker


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    braces = rf"\{{{re.escape(want)}\}}" if labels else ""
    match = re.search(rf"^{re.escape(name)}{braces} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _measure(
    targets: Sequence[MeteredTarget], scenarios: Sequence[Scenario], rounds: int
) -> Results:
    try:
        await warm_up(targets, scenarios)
        for t in targets:
            t.cpu.clear()
        return await interleave(
            targets, scenarios, rounds, lambda m: print(m, file=sys.stderr, flush=True)
        )
    finally:
        for t in targets:
            t.close()


def _settled_metrics(port: int, timeout_s: float = 10.0) -> str:
    """The Kafka bridge's ``/metrics`` once its sender has nothing queued (the last
    requests' events are at most one recorder batch + linger behind)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text
        busy = _metric(text, "alb_events_queued") + _metric(text, "alb_events_backlog")
        if busy == 0 or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def _paired(res: Results, scenario: str, a: str, b: str) -> float:
    mine = res.batches.get((scenario, a), [])
    base = res.batches.get((scenario, b), [])
    return median([x.rps / y.rps for x, y in zip(mine, base, strict=False) if y.rps])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.events_rps",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--rev", default="HEAD", help="git revision of the bridge, or 'worktree'")
    parser.add_argument("--kafka", help="bootstrap servers (default: start a local broker)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (%(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="saturation concurrency")
    parser.add_argument("--total", type=int, default=2000, help="requests per saturation batch")
    parser.add_argument("--paced", type=int, default=640, help="requests per paced c=64 batch")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded bridge")
    parser.add_argument("--base", help="also run the Kafka bridge at this revision (kafka-base)")
    parser.add_argument(
        "--upstream",
        choices=("sim", "canned"),
        default="sim",
        help="sim: the simulator answers every request; canned: bench.canned answers the "
        "saturation model from a captured reply (~15 µs) and forwards the rest (%(default)s)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="bridges on CPU 0 alone; this process, the upstream, the broker (when started "
        "here) and the bridges' shipper processes on the other CPUs",
    )
    args = parser.parse_args(argv)

    given = sys.argv[1:] if argv is None else list(argv)
    print(f"# python -m bench.events_rps {shlex.join(given)}")
    print(f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}")
    base = f", kafka-base at {args.base}" if args.base else ""
    print(f"# bridge at {args.rev}{base}; before: {load_note()}")
    pin = "; bridges pinned to CPU 0, the rest to the other CPUs" if args.pin else ""
    print(f"# upstream: {args.upstream}{pin}")
    fast = SessionWorkload("native", "/api/chat", _chat("bench-fast", False))
    paced = SessionWorkload("native-paced", "/api/chat", _chat("bench-paced", False))
    scenarios = [
        Scenario(fast, args.concurrency, args.total),
        Scenario(paced, 64, args.paced, 0.08),
    ]
    services: list[Service] = []
    bootstrap, broker = _kafka(args)
    print(f"# kafka at {bootstrap}{' (started for this run)' if broker else ''}")
    try:
        from ingest.topics import ensure_topics  # noqa: PLC0415

        asyncio.run(ensure_topics(bootstrap))
        sim = start_sim(REPO / "bench" / "fleet.yaml", rev=args.rev)
        services.append(sim)
        upstream = sim
        if args.upstream == "canned":
            port = free_port()
            argv = [sys.executable, "-m", "bench.canned", "--sim", sim.url, "--port", str(port)]
            upstream = Service("canned", argv, port)
            services.append(upstream)
            upstream.wait_ready("/api/version")
        producer = f"alb-bench-{uuid.uuid4().hex[:8]}"

        def kafka_env(producer: str) -> dict[str, str]:
            return {
                "ALB_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "ALB_PRODUCER_ID": producer,
                "ALB_CONSUMER_GROUP": producer,
                "ALB_EVENTS_SPOOL_DIR": f"/tmp/{producer}-spool",
            }

        kinds = {OFF: (args.rev, {"ALB_EVENTS": "false"}), KAFKA: (args.rev, kafka_env(producer))}
        if args.base:
            kinds[BASE] = (args.base, kafka_env(f"{producer}-base"))
        if not args.no_embedded:
            kinds[EMBEDDED] = (args.rev, {})
        ports: dict[str, int] = {}
        targets: list[MeteredTarget] = []
        broker_pid = getattr(broker, "pid", None)
        for name, (rev, env) in kinds.items():
            svc = _bridge(name, upstream.url, rev, env)
            services.append(svc)
            ports[name] = svc.port
            targets.append(MeteredTarget(name, svc.port, svc.proc.pid, broker_pid))
        if args.pin:
            rest = set(range(os.cpu_count() or 1)) - {0} or {0}
            for pid in [
                os.getpid(),
                *(svc.proc.pid for svc in services[: 2 if args.upstream == "canned" else 1]),
            ]:
                _pin(pid, rest)
            if broker_pid:
                _pin(broker_pid, rest)
            for t in targets:
                _pin(t._pids[0], {0})
            time.sleep(1.0)  # the shipper processes are up by now
            for t in targets:
                for child in _children(t._pids[0]):
                    _pin(child, rest)
        loop = new_event_loop()
        try:
            res = loop.run_until_complete(_measure(targets, scenarios, args.rounds))
        finally:
            loop.close()
        metrics = _settled_metrics(ports[KAFKA])
    finally:
        for svc in reversed(services):
            svc.stop()
        if broker is not None:
            broker.stop()  # type: ignore[attr-defined]
    print(f"# after: {load_note()}")
    print(f"# errors: {', '.join(f'{n} {res.errors(n)}' for n in ports)}")
    topic = "alb.access-log.v1"
    sent = _metric(metrics, "alb_events_sent_total", topic=topic)
    spooled = _metric(metrics, "alb_events_spooled_total", topic=topic)
    dropped = sum(
        _metric(metrics, "alb_events_dropped_total", topic=topic, reason=r)
        for r in ("spool_full", "rejected", "spool_error", "closed")
    )
    requests = sum(
        float(v)
        for v in re.findall(r'^alb_requests_total\{[^}]*status="200"[^}]*\} (\S+)$', metrics, re.M)
    )
    print(
        f"# kafka bridge: {requests:.0f} requests answered, {sent:.0f} access-log events "
        f"acknowledged by Kafka, {spooled:.0f} spooled, {dropped:.0f} dropped"
    )
    print()
    others = [n for n in (BASE, EMBEDDED) if n in ports]
    header = ["scenario", *[f"{n} req/s" for n in ports], "kafka / off"]
    header += [f"{n} / off" for n in others]
    rows = []
    verdict = ""
    for s in scenarios:
        row = [s.name, *[f"{res.absolute(s.name, n, 'rps'):.0f}" for n in ports]]
        k = _paired(res, s.name, KAFKA, OFF)
        row.append(f"{k:.3f}")
        row += [f"{_paired(res, s.name, n, OFF):.3f}" for n in others]
        rows.append(row)
        if s is scenarios[0]:
            verdict = "PASS" if k >= TARGET_RATIO else "FAIL"
            verdict = f"{verdict}: kafka / off = {k:.3f} at {s.name} (target >= {TARGET_RATIO})"
    print(f"Requests/s, medians of {args.rounds} interleaved rounds; ratios paired by round")
    print()
    print(table(header, rows))
    print()
    print(verdict)
    print()
    print("CPU per answered request, µs (medians over rounds; /proc of each process)")
    print()
    cpu_rows = []
    for s in scenarios:
        row = [s.workload.name]
        for t in targets:
            row.append(f"{median([c for w, c, _, _ in t.cpu if w == s.workload.name]):.0f}")
        for t in targets:
            if t.name in (KAFKA, BASE):
                shipper_us = [c for w, _, _, c in t.cpu if w == s.workload.name]
                row.append(f"{median(shipper_us):.0f}")
                broker_us = [b for w, _, b, _ in t.cpu if w == s.workload.name]
                row.append(f"{median(broker_us):.0f}" if broker is not None else "-")
        cpu_rows.append(row)
    extra = [
        col
        for t in targets
        if t.name in (KAFKA, BASE)
        for col in (f"shipper ({t.name})", f"broker ({t.name})")
    ]
    print(table(["workload", *[f"bridge {t.name}" for t in targets], *extra], cpu_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
