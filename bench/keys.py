"""What API keys cost on the request path (issue #16): the bridge without keys, with a
key that has no limits, with a key limited in memory (one replica), and with the same
key limited through Redis (``ALB_REDIS_URL``: the limits are shared), side by side in
one run in front of one simulator.

Every contender gets the same requests, ``Authorization: Bearer <key>`` included (the
bridge without keys ignores it). The limited key has rpm, tpm, concurrency and a daily
budget, all far above what the run uses, so every request goes through every counter
and none is refused. Printed: added p50 / p99 per scenario (paired with direct within
a round, median over rounds), req/s at c=64, CPU-ms per answered request of each
bridge process (``bench.replicas``' meter), and each contender's errors (a 429 would
be one).

    .venv/bin/python -m bench.keys                 # 5 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import platform
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from bench.harness import DIRECT, WORKLOADS, Results, Scenario, interleave, warm_up
from bench.loadgen import new_event_loop
from bench.overhead import SIM_PARALLEL
from bench.procs import REPO, Service, start_sim
from bench.replicas import MeteredTarget, _describe, _start_bridge
from bench.report import load_note, median, ms, table
from bridge.policy.keys import Limits, parse_scopes
from bridge.tenancy import keyring
from bridge.tenancy.store import RedisKeys, SqliteKeys

OPEN = "no-keys"
KEYED = "key"
LIMITED = "key-limited"
SHARED = "key-limited-redis"
BIG = Limits(rpm=10**8, tpm=10**9 - 1, concurrency=10**6, daily_tokens=10**9 - 1)


async def _keys(sqlite: Path, redis_url: str, namespace: str) -> tuple[str, str]:
    """The same two keys (no limits; far-off limits) in the SQLite and the Redis store."""
    local = SqliteKeys(sqlite)
    shared = RedisKeys(redis_url, namespace=namespace, timeout=2.0)
    try:
        plain, plain_rec = await keyring.create(local, "bench", parse_scopes("inference,read"))
        limited, lim_rec = await keyring.create(
            local, "bench-limited", parse_scopes("inference,read"), limits=BIG
        )
        await shared.put(plain_rec)
        await shared.put(lim_rec)
    finally:
        await shared.aclose()
    return plain, limited


def _with_key(s: Scenario, token: str) -> Scenario:
    wl = dataclasses.replace(s.workload, headers=f"Authorization: Bearer {token}\r\n")
    return dataclasses.replace(s, workload=wl)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.keys", description=__doc__)
    parser.add_argument("--rev", default="worktree", help="git revision, or 'worktree'")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n1", type=int, default=300, help="requests per c=1 batch")
    parser.add_argument("--n64", type=int, default=1280, help="requests per c=64 batch")
    parser.add_argument("--fleet", type=Path, default=REPO / "bench" / "fleet.yaml")
    args = parser.parse_args(argv)
    print(f"# python -m bench.keys {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}")
    print(f"# bridge: alb serve at {_describe(args.rev)}")
    print(f"# before: {load_note()}")
    from tests.services import redis_server  # noqa: PLC0415  (a bench-only convenience)

    services: list[Service] = []
    redis = redis_server.start()
    tmp = Path(tempfile.mkdtemp(prefix="alb-bench-keys-"))
    namespace = f"alb-bench-keys-{uuid.uuid4().hex[:6]}"
    try:
        plain, limited = asyncio.run(_keys(tmp / "keys.sqlite", redis.url, namespace))
        sim = start_sim(args.fleet)
        services.append(sim)
        keyed_env = {"ALB_AUTH": "keys", "ALB_KEYS_FILE": str(tmp / "keys.sqlite")}
        shared_env = {**keyed_env, "ALB_REDIS_URL": redis.url, "ALB_COORD_NAMESPACE": namespace}
        made = [
            (OPEN, {}, plain),
            (KEYED, keyed_env, plain),
            (LIMITED, keyed_env, limited),
            (SHARED, shared_env, limited),
        ]
        targets = [MeteredTarget(DIRECT, sim.port, None, sim.proc.pid)]
        tokens = {DIRECT: plain}
        for name, env, token in made:
            svc = _start_bridge(name, args.rev, sim.url, 1, None, SIM_PARALLEL, env)
            services.append(svc)
            targets.append(MeteredTarget(name, svc.port, svc.proc.pid, sim.proc.pid))
            tokens[name] = token
        base = [
            Scenario(WORKLOADS["native"], 1, args.n1),
            Scenario(WORKLOADS["openai"], 1, args.n1),
            Scenario(WORKLOADS["native-paced"], 64, args.n64 // 2),
            Scenario(WORKLOADS["openai"], 64, args.n64),
        ]
        res = _run(targets, base, tokens, args.rounds)
    finally:
        for svc in reversed(services):
            svc.stop()
        redis.stop()
    names = [t.name for t in targets[1:]]
    print(f"# after: {load_note()}")
    print("# errors: " + ", ".join(f"{n} {res.errors(n)}" for n in [DIRECT, *names]))
    print()
    print(f"Added ms, medians of {args.rounds} rounds; req/s and CPU-ms per request at c=64")
    print()
    rows = []
    for s in base:
        row = [
            s.name,
            ms(res.absolute(s.name, DIRECT, "p50")),
            ms(res.absolute(s.name, DIRECT, "p99")),
        ]
        for n in names:
            row += ["+" + ms(res.added(s.name, n, "p50")), "+" + ms(res.added(s.name, n, "p99"))]
        rows.append(row)
    header = ["scenario", "direct p50", "direct p99"]
    for n in names:
        header += [f"{n} +p50", f"{n} +p99"]
    print(table(header, rows))
    print()
    rows = []
    for s in base:
        row = [s.name]
        row += [f"{res.absolute(s.name, n, 'rps'):.0f}" for n in [DIRECT, *names]]
        for t in targets[1:]:
            row.append(f"{median([c for name, c in t.cpu if name == s.name]) * 1e3:.3f}")
        rows.append(row)
    header = ["scenario", *(f"{n} req/s" for n in [DIRECT, *names])]
    header += [f"{n} CPU-ms/req" for n in names]
    print(table(header, rows))
    return 0


def _run(
    targets: Sequence[MeteredTarget],
    base: Sequence[Scenario],
    tokens: dict[str, str],
    rounds: int,
) -> Results:
    """Interleaved rounds; each target sends its own key (the load generator's
    workloads are per scenario, so the header goes in through a per-target copy)."""
    loop = new_event_loop()

    class Keyed(MeteredTarget):
        async def run(self, workload, concurrency, total, stagger=0.0):  # type: ignore[no-untyped-def]
            token = tokens[self.name]
            wl = dataclasses.replace(workload, headers=f"Authorization: Bearer {token}\r\n")
            return await super().run(wl, concurrency, total, stagger)

    for t in targets:
        t.__class__ = Keyed
    try:

        async def go() -> Results:
            await warm_up(targets, base[:2])
            for t in targets:
                t.cpu.clear()
            return await interleave(
                targets, base, rounds, lambda m: print(m, file=sys.stderr, flush=True)
            )

        return loop.run_until_complete(go())
    finally:
        for t in targets:
            t.close()
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
