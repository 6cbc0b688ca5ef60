"""The replay and the live bridge make the same decisions on the same trace.

One short trace goes through the discrete-event replay (``replay.simulate``) and,
time-scaled, through a live bridge in front of ``ollamasim`` running the same fleet
file. Both must take the same sequence of load / evict / unload / reject decisions
(kind, model, daemon, and a load's reason): the replay's ``BridgeFleet.decisions``
against the live bridge's ``/alb/v1/decisions``. The trace has each kind: cold loads,
an eviction for room, a request that can never fit (refused at admission), a reload
for a bigger context, and idle unloads during a gap.

The gaps between arrivals are wide (10 s of trace time, 0.2 s of wall time) so that
what the test compares is the decisions, not the race between two clocks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from bridge.settings import load_settings
from ollamasim.config import FleetConfig
from ollamasim.testing import RunningFleet, running_fleet
from replay.bridge_fleet import BridgeFleet
from replay.policies import PolicySpec, ReclaimKind
from replay.simulate import new_simulation
from replay.workload import Request
from tests.bridge._support import running_bridge

GIB = 1024**3
SCALE = 0.02  # one trace second is 20 ms of wall time
IDLE_AFTER_S = 60.0
CHARS_PER_TOKEN = 3.5

FLEET: dict[str, Any] = {
    "time_scale": SCALE,
    "gen_tokens_per_s": 200.0,
    "prefill_tokens_per_s": 50000.0,
    # The default architecture's KV cache (128 KiB a token), which is also what the
    # bridge reads from /api/show: both sides estimate the same sizes. "a" is smaller,
    # so cheaper to reload: the eviction value (reuse x reload seconds) ranks it lowest
    # on both clocks (on the live bridge's wall clock the recency term is ~1).
    "models": [
        {"name": "a", "size": 2 * GIB, "context_length": 32768},
        {"name": "b", "size": 4 * GIB, "context_length": 32768},
        {"name": "c", "size": 4 * GIB, "context_length": 32768},
        {"name": "huge", "size": 12 * GIB},
    ],
    # 0.9 x 11 GiB: room for a and b at 4096 (2.5 + 4.5 GiB), not for c as well; b at
    # 16384 (6 GiB) and c do not fit together; "huge" never fits.
    "daemons": [
        {
            "name": "d0",
            "memory": 11 * GIB,
            "num_parallel": 1,
            "load_fixed_s": 0.5,
            "load_bandwidth": GIB // 2,
        },
    ],
}

#: (trace seconds, model, num_ctx on the native API)
TRACE: list[tuple[float, str, int | None]] = [
    (0.0, "a", None),
    (10.0, "b", None),
    (20.0, "c", None),  # room for c: a (least recently used) is evicted
    (30.0, "huge", None),  # can never fit: refused at admission
    (40.0, "b", 16384),  # more context than b's runner: c is evicted, b is reloaded
    (200.0, "a", None),  # a loads again (with idle reclaim b was unloaded meanwhile)
]


def _requests() -> list[Request]:
    return [
        Request(i, t, f"{m}:latest", f"s{i}", 20, 4, num_ctx, openai=False)
        for i, (t, m, num_ctx) in enumerate(TRACE)
    ]


def _compared(rows: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    """The decisions the parity is about: loads (their reason), evictions, unloads and
    refusals (reasons other than a load's are free text and not compared)."""
    out = []
    for kind, model, daemon, reason in rows:
        if kind == "load" and reason in ("request", "reload"):
            out.append((kind, model, daemon, reason))
        elif kind in ("evict", "unload", "reject"):
            out.append((kind, model, daemon, ""))
    return out


def _replayed(reclaim: ReclaimKind) -> list[tuple[str, str, str, str]]:
    policy = PolicySpec(
        "live", "bridge", idle_unload_after_s=IDLE_AFTER_S, prefetch=False, reclaim=reclaim
    )
    sim = new_simulation(FleetConfig.model_validate(FLEET), policy, _requests())
    sim.run()
    ctl = sim.controller
    assert isinstance(ctl, BridgeFleet)
    return _compared([(d.kind, d.model, d.daemon, d.reason) for d in ctl.decisions])


def _body(req: Request) -> dict[str, Any]:
    # The replay's stand-in body (``BridgeFleet.need``): prompt_tokens x chars per token.
    options: dict[str, Any] = {"num_predict": req.output_tokens}
    if req.num_ctx is not None:
        options["num_ctx"] = req.num_ctx
    chars = round(req.prompt_tokens * CHARS_PER_TOKEN)
    return {"model": req.model, "prompt": "x" * chars, "stream": False, "options": options}


async def _live(fleet: RunningFleet, reclaim: ReclaimKind) -> list[tuple[str, str, str, str]]:
    spec = FleetConfig.model_validate(FLEET).daemons[0]
    d = fleet.daemons[0]
    daemons = (
        f"{d.name}={d.base_url}?parallel={spec.num_parallel}"
        f"&memory={int(spec.memory)}&max_loaded={spec.max_runners}"
    )
    settings = load_settings(
        {"ALB_DAEMONS": daemons},
        reclaim=reclaim,
        idle_unload_after=IDLE_AFTER_S * SCALE,
        refresh_interval=0.02,
        chars_per_token=CHARS_PER_TOKEN,
        predictor_embedded=False,  # the replay's policy: recency, fixed idle unloads
    )
    async with (
        running_bridge(settings) as b,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as c,
    ):
        start = time.monotonic()

        async def send(req: Request) -> int:
            await asyncio.sleep(max(start + req.t * SCALE - time.monotonic(), 0))
            return (await c.post("/api/generate", json=_body(req))).status_code

        async with asyncio.TaskGroup() as tg:
            sent = [tg.create_task(send(req)) for req in _requests()]
        assert [t.result() for t in sent] == [200, 200, 200, 400, 200, 200]
        rows = (await c.get("/alb/v1/decisions", params={"limit": 1000})).json()["decisions"]
    return _compared([(r["kind"], r["model"], r["daemon"], r["reason"]) for r in reversed(rows)])


#: What the trace is built to show, so that a parity of two empty lists cannot pass.
EXPECTED = [
    ("load", "a:latest", "d0", "request"),
    ("load", "b:latest", "d0", "request"),
    ("evict", "a:latest", "d0", ""),
    ("load", "c:latest", "d0", "request"),
    ("reject", "huge:latest", "", ""),
    ("evict", "c:latest", "d0", ""),
    ("load", "b:latest", "d0", "reload"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("reclaim", "then"),
    [
        # Idle memory is reclaimed after the keep-alive: b goes during the gap.
        ("idle", [("unload", "b:latest", "d0", ""), ("load", "a:latest", "d0", "request")]),
        # On demand (the default): b stays; a fits beside it.
        ("demand", [("load", "a:latest", "d0", "request")]),
    ],
)
async def test_the_replay_and_the_live_bridge_decide_alike(
    reclaim: ReclaimKind, then: list[tuple[str, str, str, str]]
) -> None:
    replayed = _replayed(reclaim)
    assert replayed == EXPECTED + then
    async with running_fleet(FLEET) as fleet:
        live = await _live(fleet, reclaim)
    assert live == replayed
