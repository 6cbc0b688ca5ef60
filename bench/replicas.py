"""Replicas and workers (issue #15): the bridge as one process, ``alb serve --workers N``
and nginx, side by side in one run, each against the simulator directly.

All contenders are up at once, in front of one simulator (``bench/fleet.yaml``), and
measured from this process (the load generator, ``bench/loadgen.py``) in interleaved
rounds (``bench/harness.py``) on ``bench.overhead``'s scenarios and its concurrency
sweep, plus instant non-streaming replies on the OpenAI API at c=64 (the saturation
figure issue #15 compares with nginx):

* ``bridge``: ``alb serve`` as one process (no Redis: today's default);
* ``workers``: ``alb serve --workers N`` (``--workers``, default 2) on one port
  (SO_REUSEPORT), the workers coordinating through a throwaway ``redis-server``
  (``tests/services/redis_server.py``) given as ``ALB_REDIS_URL``;
* ``nginx``: Debian's nginx (``scripts/nginx install``) with a generated config in a
  temp dir (``-p DIR -c CONF``, ``daemon off``): ``worker_processes N`` (the same
  process count as the bridge's workers), ``listen ... reuseport``, ``proxy_buffering
  off``, HTTP/1.1 keep-alive to the simulator, no access log: the floor;
* ``workers-wide`` (diagnostic, ``--no-diag`` leaves it out): the same workers told the
  daemon has twice its 64 slots, so no worker's slot share is ever below the
  connections it holds; and ``workers-fast``: the same workers re-apportioning the
  shares every 0.1 s (``ALB_LEASE_TTL=0.3``) instead of every 1.67 s.

Printed: added p50 / p99 per scenario and contender (paired with direct within a round,
median over rounds) with issue #3's targets checked for the bridges; req/s at c=64
and the ratios to nginx; CPU-ms per answered request of each contender (``/proc``:
the contender's process and all its descendants, so every worker and nginx's master
and workers; not the load generator, the simulator or Redis); the highest req/s with
p99 < ``--p99-budget-ms`` in the sweep; and each bridge process's own counters at the
end: requests, how many queued for a slot inside the bridge and for how long, and the
load generator's connections the kernel gave it.

    .venv/bin/python -m bench.replicas                 # --workers 2, 5 rounds
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench.harness import DIRECT, METRICS, WORKLOADS, Results, Scenario, interleave, warm_up
from bench.loadgen import BatchResult, Target, Workload, new_event_loop
from bench.overhead import P50_C1_TARGET_MS, P99_C64_TARGET_MS, SIM_PARALLEL, _plan
from bench.procs import HOST, REPO, Service, bridge_source, free_port, start_sim
from bench.report import load_note, median, ms, ratio, table

BRIDGE = "bridge"
WORKERS = "workers"
#: Diagnostic, not a contender for the targets: the same workers told the daemon has
#: twice its slots, so no worker's share is ever below the connections it holds (the
#: load generator never has more than 64 requests in flight, the simulator's slots).
WIDE = "workers-wide"
#: Diagnostic: the same workers with their coordination rounds (which re-apportion the
#: slot shares by demand) every 0.1 s instead of every 1.67 s (ALB_LEASE_TTL 0.3 s, the
#: least allowed, against 5 s by default).
FAST = "workers-fast"
NGINX = "nginx"

NGINX_CONF = """\
daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    upstream sim {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
        # Under the simulator's (uvicorn's) 5 s: nginx never reuses a connection the
        # simulator is closing (a POST is not retried: a 502).
        keepalive_timeout 4s;
    }}
    server {{
        listen {host}:{port} reuseport;
        location / {{
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The simulator, as Ollama, answers 403 to a Host that is not local.
            proxy_set_header Host $http_host;
            proxy_buffering off;
        }}
    }}
}}
"""


def _cpu_s(pid: int) -> float:
    """CPU seconds of process ``pid``'s live threads (``/proc/PID/task/*/schedstat``:
    nanoseconds on a CPU, finer than ``stat``'s clock ticks); where the kernel has no
    schedstat (gVisor), the process's ``stat`` utime + stime in clock ticks."""
    total, read = 0, False
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
            read = True
    if read:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (from every process's parent in
    ``/proc/*/stat``: not every kernel has ``/proc/PID/task/*/children``)."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _tree_cpu_s(pid: int) -> float:
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            total += _cpu_s(p)
    return total


class MeteredTarget(Target):
    """A target that also records, per batch, its process tree's CPU per answered request."""

    def __init__(self, name: str, port: int, pid: int | None, sim_pid: int) -> None:
        super().__init__(name, HOST, port)
        self._pid = pid
        self._sim = sim_pid
        #: (scenario name, CPU seconds per answered request) per batch.
        self.cpu: list[tuple[str, float]] = []
        #: The same batches' simulator and load generator (this process) CPU per request.
        self.sim_cpu: list[tuple[str, float]] = []
        self.gen_cpu: list[tuple[str, float]] = []

    async def run(
        self, workload: Workload, concurrency: int, total: int, stagger: float = 0.0
    ) -> BatchResult:
        sim0, gen0 = _cpu_s(self._sim), time.process_time()
        before = _tree_cpu_s(self._pid) if self._pid else 0.0
        result = await super().run(workload, concurrency, total, stagger)
        after = _tree_cpu_s(self._pid) if self._pid else 0.0
        sim1, gen1 = _cpu_s(self._sim), time.process_time()
        answered = max(len(result.latencies), 1)
        name = f"{workload.name} c={concurrency}"
        self.cpu.append((name, (after - before) / answered))
        self.sim_cpu.append((name, (sim1 - sim0) / answered))
        self.gen_cpu.append((name, (gen1 - gen0) / answered))
        return result


def _start_bridge(
    name: str,
    rev: str,
    upstream: str,
    workers: int,
    redis_url: str | None,
    slots: int,
    extra: dict[str, str] | None = None,
) -> Service:
    port = free_port()
    src, cli = bridge_source(rev)
    env = {"ALB_DAEMONS": f"bench0={upstream}?parallel={slots}", "OLLAMA_HOST": upstream}
    env |= extra or {}
    argv = [sys.executable, "-m", cli, "serve", "--host", HOST, "--port", str(port)]
    if workers > 1:
        assert redis_url is not None
        argv += ["--workers", str(workers)]
        env |= {"ALB_REDIS_URL": redis_url, "ALB_COORD_NAMESPACE": f"alb-bench-{port}"}
    svc = Service(name, argv, port, env=env, cwd=src, owns_cwd=src != REPO)
    svc.wait_ready("/healthz", timeout=60)  # open whatever ALB_AUTH says
    deadline = time.monotonic() + 60
    want = [f"worker {i} ready" for i in range(1, workers)]
    while not all(w in svc.output() for w in want):  # every worker listens, not just one
        if time.monotonic() > deadline or svc.proc.poll() is not None:
            tail = svc.output()[-3000:]
            svc.stop()
            raise RuntimeError(f"{name}: not every worker became ready:\n{tail}")
        time.sleep(0.1)
    return svc


def _start_nginx(upstream_port: int, workers: int) -> tuple[Service, Path]:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else ""
    )
    if not binary:
        raise SystemExit("nginx not found: run `scripts/nginx install`")
    port = free_port()
    conf_dir = Path(tempfile.mkdtemp(prefix="alb-bench-nginx-"))
    conf = conf_dir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            workers=workers,
            dir=conf_dir,
            upstream=f"{HOST}:{upstream_port}",
            host=HOST,
            port=port,
        )
    )
    argv = [binary, "-p", str(conf_dir), "-c", str(conf), "-e", str(conf_dir / "error.log")]
    svc = Service(NGINX, argv, port)
    svc.wait_ready("/api/version", timeout=30)
    return svc, conf_dir


def _label(s: Scenario) -> str:
    return s.name + (" (TTFT)" if s.workload.frame_sep is not None else "")


def _vs_nginx(res: Results, scenario: str, name: str, metric: str) -> float:
    """Median over rounds of ``name`` / nginx for ``metric``, paired by round."""
    fn = METRICS[metric]
    mine = res.batches.get((scenario, name), [])
    base = res.batches.get((scenario, NGINX), [])
    return median([fn(a) / fn(b) if fn(b) else math.nan for a, b in zip(mine, base, strict=False)])


def _latency_table(
    res: Results, scenarios: Sequence[Scenario], names: Sequence[str], bridges: Sequence[str]
) -> tuple[str, list[str]]:
    """Added p50 / p99 per contender; issue #3's target checked for each bridge."""
    rows, fails = [], []
    for s in scenarios:
        stream = s.workload.frame_sep is not None
        p50, p99 = ("ttft_p50", "ttft_p99") if stream else ("p50", "p99")
        metric, target = (p50, P50_C1_TARGET_MS) if s.concurrency == 1 else (p99, P99_C64_TARGET_MS)
        row = [
            _label(s),
            ms(res.absolute(s.name, DIRECT, p50)),
            ms(res.absolute(s.name, DIRECT, p99)),
        ]
        for n in names:
            row += ["+" + ms(res.added(s.name, n, p50)), "+" + ms(res.added(s.name, n, p99))]
        verdicts = []
        for b in bridges:
            added = res.added(s.name, b, metric) * 1e3
            ok = added <= target
            verdicts.append("PASS" if ok else "FAIL")
            if not ok:
                fails.append(f"{b} {s.name}: {added:.2f} ms added ({metric} <= {target:g} ms)")
        label = f"+{'p50' if metric == p50 else 'p99'} <= {target:g}"
        row.append(" / ".join(verdicts) + f" ({label})")
        rows.append(row)
    header = ["scenario", "direct p50", "direct p99"]
    for n in names:
        header += [f"{n} +p50", f"{n} +p99"]
    header.append(" / ".join(bridges) + " target")
    return table(header, rows), fails


def _rps_table(res: Results, scenarios: Sequence[Scenario], names: Sequence[str]) -> str:
    rows = []
    for s in scenarios:
        row = [s.name, f"{res.absolute(s.name, DIRECT, 'rps'):.0f}"]
        row += [f"{res.absolute(s.name, n, 'rps'):.0f}" for n in names]
        row += [f"{_vs_nginx(res, s.name, n, 'rps'):.2f}x" for n in names if n != NGINX]
        rows.append(row)
    header = ["scenario", "direct req/s", *(f"{n} req/s" for n in names)]
    header += [f"{n} / nginx" for n in names if n != NGINX]
    return table(header, rows)


def _cpu_table(targets: Sequence[MeteredTarget], scenarios: Sequence[Scenario]) -> str:
    rows = []
    for s in scenarios:
        row = [s.name]
        per = {t.name: median([c for n, c in t.cpu if n == s.name]) for t in targets}
        row += [f"{per[t.name] * 1e3:.3f}" for t in targets]
        row += [ratio(per[t.name], per[NGINX]) for t in targets if t.name != NGINX]
        rows.append(row)
    header = ["scenario", *(f"{t.name} CPU-ms/req" for t in targets)]
    header += [f"{t.name} / nginx" for t in targets if t.name != NGINX]
    return table(header, rows)


def _budget_table(targets: Sequence[MeteredTarget], scenarios: Sequence[Scenario]) -> str:
    """Where two cores go at saturation: CPU-ms per request of the contender, the
    simulator and the load generator, and the req/s two fully busy cores would allow."""
    rows = []
    for s in scenarios:
        for t in targets:
            parts = [
                median([c for n, c in series if n == s.name])
                for series in (t.cpu, t.sim_cpu, t.gen_cpu)
            ]
            total = sum(parts)
            cores = os.cpu_count() or 1
            ceiling = f"{cores / total:.0f}" if total else "-"
            ms_parts = [f"{p * 1e3:.3f}" for p in parts]
            rows.append([s.name, t.name, *ms_parts, f"{total * 1e3:.3f}", ceiling])
    header = ["scenario", "target", "proxy", "simulator", "load generator", "sum"]
    header.append(f"{os.cpu_count()} cores / sum, req/s")
    return table(header, rows)


def _sweep_table(
    res: Results, sweep: Sequence[Scenario], names: Sequence[str], budget_s: float
) -> tuple[str, str]:
    rows = []
    best = dict.fromkeys([DIRECT, *names], (0.0, 0))
    for s in sweep:
        row = [str(s.concurrency)]
        for n in [DIRECT, *names]:
            rps, p99 = res.absolute(s.name, n, "rps"), res.absolute(s.name, n, "p99")
            row += [f"{rps:.0f}", ms(p99)]
            if p99 < budget_s and rps > best[n][0]:
                best[n] = (rps, s.concurrency)
        rows.append(row)
    header = ["concurrency"]
    for n in [DIRECT, *names]:
        header += [f"{n} req/s", f"{n} p99"]
    nginx_best = best[NGINX][0]
    parts = [
        f"{n} {rps:.0f} (c={c})"
        + ("" if n in (DIRECT, NGINX) else f", {ratio(rps, nginx_best)} nginx")
        for n, (rps, c) in best.items()
    ]
    summary = f"Highest req/s with p99 < {budget_s * 1e3:g} ms: " + "; ".join(parts)
    return table(header, rows), summary


def _metric_sum(text: str, name: str) -> float:
    """The sum over every label set of metric ``name`` in a Prometheus exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def _per_worker(port: int, workers: int, tries: int = 200) -> dict[str, dict[str, float]]:
    """Each worker's counters, read over one connection per try (the kernel picks the
    worker per connection): requests, requests that queued for a slot, their wait,
    open client connections (the load generator's pool, as the kernel spread it)."""
    seen: dict[str, dict[str, float]] = {}
    for _ in range(tries):
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=5) as c:
            coord = c.get("/alb/v1/models").json().get("coordination") or {}
            text = c.get("/metrics").text
        seen[str(coord.get("replica", "single"))] = {
            "requests": _metric_sum(text, "alb_requests_total"),
            "queued": _metric_sum(text, "alb_queue_wait_seconds_count"),
            "wait_s": _metric_sum(text, "alb_queue_wait_seconds_sum"),
            "connections": _metric_sum(text, "alb_client_connections") - 1,  # not this one
        }
        if len(seen) >= workers:
            break
    return seen


async def _measure(
    targets: Sequence[MeteredTarget],
    scenarios: Sequence[Scenario],
    warm: Sequence[Scenario],
    rounds: int,
    workers: int,
    counters: dict[str, dict[str, dict[str, float]]],
) -> Results:
    try:
        await warm_up(targets, warm)
        for t in targets:
            t.cpu.clear()
        res = await interleave(
            targets, scenarios, rounds, lambda m: print(m, file=sys.stderr, flush=True)
        )
        # Read while the load generator's connections are still open.
        for t in targets:
            if t.name in (BRIDGE, WORKERS, WIDE, FAST):
                counters[t.name] = _per_worker(t.port, 1 if t.name == BRIDGE else workers)
        return res
    finally:
        for t in targets:
            t.close()


def _describe(rev: str) -> str:
    if rev == "worktree":
        return rev
    out = subprocess.run(
        ["git", "log", "-1", "--format=%h %s", rev, "--", "bridge", "alb"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()[:100] or rev


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replicas",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--rev", default="HEAD", help="git revision of the bridge, or 'worktree'")
    parser.add_argument(
        "--workers", type=int, default=2, help="alb serve --workers and nginx worker_processes"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (%(default)s)")
    parser.add_argument("--n1", type=int, default=300, help="requests per c=1 batch")
    parser.add_argument("--n64", type=int, default=640, help="requests per c=64 batch")
    parser.add_argument("--streams1", type=int, default=20, help="streams per c=1 batch")
    parser.add_argument("--streams64", type=int, default=192, help="streams per c=64 batch")
    parser.add_argument(
        "--sweep", default="1,2,4,8,16,32,64", help="concurrency steps of the sweep"
    )
    parser.add_argument("--p99-budget-ms", type=float, default=10.0)
    parser.add_argument(
        "--no-diag",
        dest="diag",
        action="store_false",
        help=f"leave out {WIDE} (the workers told of 2x the slots) and {FAST} (the "
        "workers' rounds every 0.1 s): what the slot shares cost",
    )
    parser.add_argument("--fleet", type=Path, default=REPO / "bench" / "fleet.yaml")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2")
    plan = _plan(args)
    # Instant replies at c=64 on the OpenAI API: the saturation figure of issue #15.
    openai64 = Scenario(WORKLOADS["openai"], 64, 40 * 64)
    scenarios = [*plan.main, *plan.sweep, openai64]
    saturation = [plan.sweep[-1], openai64]

    given = sys.argv[1:] if argv is None else list(argv)
    print(f"# python -m bench.replicas {shlex.join(given)}")
    print(f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}")
    print(f"# bridge: alb serve at {_describe(args.rev)}")
    nginx_v = subprocess.run(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-v"],
        capture_output=True,
        text=True,
        check=False,
    )
    print(
        f"# {nginx_v.stderr.strip()}, worker_processes {args.workers}; "
        f"alb serve --workers {args.workers}"
    )
    print(f"# before: {load_note()}")
    from tests.services import redis_server  # noqa: PLC0415  (a bench-only convenience)

    services: list[Service] = []
    counters: dict[str, dict[str, dict[str, float]]] = {}
    redis = None
    nginx_dir: Path | None = None
    try:
        redis = redis_server.start()
        sim = start_sim(args.fleet, rev="worktree" if args.rev == "worktree" else "HEAD")
        services.append(sim)
        bridge = _start_bridge(BRIDGE, args.rev, sim.url, 1, None, SIM_PARALLEL)
        services.append(bridge)
        workers = _start_bridge(WORKERS, args.rev, sim.url, args.workers, redis.url, SIM_PARALLEL)
        services.append(workers)
        targets = [
            MeteredTarget(DIRECT, sim.port, None, sim.proc.pid),
            MeteredTarget(BRIDGE, bridge.port, bridge.proc.pid, sim.proc.pid),
            MeteredTarget(WORKERS, workers.port, workers.proc.pid, sim.proc.pid),
        ]
        if args.diag:
            wide = _start_bridge(WIDE, args.rev, sim.url, args.workers, redis.url, 2 * SIM_PARALLEL)
            services.append(wide)
            targets.append(MeteredTarget(WIDE, wide.port, wide.proc.pid, sim.proc.pid))
            fast = _start_bridge(
                FAST, args.rev, sim.url, args.workers, redis.url, SIM_PARALLEL,
                {"ALB_LEASE_TTL": "0.3"},
            )  # fmt: skip
            services.append(fast)
            targets.append(MeteredTarget(FAST, fast.port, fast.proc.pid, sim.proc.pid))
        nginx, nginx_dir = _start_nginx(sim.port, args.workers)
        services.append(nginx)
        targets.append(MeteredTarget(NGINX, nginx.port, nginx.proc.pid, sim.proc.pid))
        print(
            f"# processes: {WORKERS} {len(_tree(workers.proc.pid))} (supervisor + workers), "
            f"{NGINX} {len(_tree(nginx.proc.pid))} (master + workers)"
        )
        loop = new_event_loop()
        try:
            res = loop.run_until_complete(
                _measure(targets, scenarios, plan.main, args.rounds, args.workers, counters)
            )
        finally:
            loop.close()
    finally:
        for svc in reversed(services):
            svc.stop()
        if redis is not None:
            redis.stop()
        if nginx_dir is not None:
            shutil.rmtree(nginx_dir, ignore_errors=True)
    names = [t.name for t in targets[1:]]
    print(f"# after: {load_note()}")
    print("# errors: " + ", ".join(f"{n} {res.errors(n)}" for n in [DIRECT, *names]))
    print()
    print(f"Added ms (streams: time to first token), medians of {args.rounds} rounds")
    print()
    latency, fails = _latency_table(res, plan.main, names, [BRIDGE, WORKERS])
    print(latency)
    print()
    print("Instant non-streaming replies at c=64: req/s (medians; ratio to nginx paired by round)")
    print()
    print(_rps_table(res, saturation, names))
    print()
    print("CPU per answered request, ms (medians over rounds; the contender's processes only)")
    print()
    print(_cpu_table(targets[1:], [*plan.main, *saturation]))
    print()
    print("Instant replies at c=64: CPU-ms per request of everything on the machine")
    print()
    print(_budget_table(targets, saturation))
    print()
    sweep, summary = _sweep_table(res, plan.sweep, names, args.p99_budget_ms / 1e3)
    print("Non-streaming /api/chat, concurrency sweep (closed loop)")
    print()
    print(sweep)
    print()
    print(summary)
    print()
    print("Each bridge process at the end (its /metrics; warm-up included): requests that")
    print("queued for a slot inside the bridge, and the load generator's connections on it")
    print()
    rows = []
    for name, per in counters.items():
        for replica, c in sorted(per.items()):
            mean = c["wait_s"] / c["queued"] * 1e3 if c["queued"] else 0.0
            rows.append(
                [
                    f"{name} {replica}",
                    f"{c['requests']:.0f}",
                    f"{c['queued']:.0f}",
                    f"{c['queued'] / max(c['requests'], 1) * 100:.2f} %",
                    f"{mean:.2f}",
                    f"{c['connections']:.0f}",
                ]
            )
    header = ["process", "requests", "queued", "queued share", "mean wait ms", "connections"]
    print(table(header, rows))
    print()
    ratios = {n: _vs_nginx(res, saturation[-1].name, n, "rps") for n in (BRIDGE, WORKERS)}
    rps_ok = ratios[WORKERS] >= 0.9
    print(
        f"req/s at c=64 (openai, instant) / nginx: {WORKERS} {ratios[WORKERS]:.2f}x, "
        f"{BRIDGE} {ratios[BRIDGE]:.2f}x: {'PASS' if rps_ok else 'FAIL'} ({WORKERS} >= 0.9x)"
    )
    verdict = "PASS" if not fails and rps_ok else "FAIL"
    print(
        f"Latency targets (issue #3): {'PASS' if not fails else 'FAIL'}"
        + "".join(f"\n  FAIL {f}" for f in fails)
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
