"""``bridge.policy.replicas``: copies of a hot model, decided on snapshots."""

from __future__ import annotations

from bridge.policy.numctx import Need
from bridge.policy.placement import (
    DaemonView,
    RecencyOracle,
    RoomPlan,
    RunnerView,
    Serve,
    eviction_value,
    plan_room,
    route,
    wait_s,
)
from bridge.policy.replicas import (
    Backlog,
    Replicate,
    expected_wait,
    rebalance,
    replicate,
    retirements,
)

GIB = 1024**3
HOT = "hot:latest"


def _view(name: str, *runners: RunnerView, budget: int = 20 * GIB) -> DaemonView:
    return DaemonView(
        name=name,
        up=True,
        models=frozenset({HOT, "other:latest"}),
        runners={r.key: r for r in runners},
        budget=budget,
        max_loaded=3,
        parallel=2,
    )


def _runner(
    key: str, *, busy: bool = False, idle_s: float = 600.0, size: int = 8 * GIB
) -> RunnerView:
    return RunnerView(key, size, 4096, False, busy, False, idle_s, 5.0)


def _decide(
    views: list[DaemonView], backlogs: list[Backlog], load_s: float = 5.0, cap: int = 4
) -> Replicate | None:
    return replicate(
        views,
        HOT,
        backlogs,
        size_of=lambda v: 4 * GIB,
        oracle=RecencyOracle(),
        load_s=load_s,
        max_copies=cap,
    )


def test_the_expected_wait_drains_the_queue_at_every_copys_slots() -> None:
    assert expected_wait([Backlog("a", 20, 2, 1.0)]) == 10.0
    assert expected_wait([Backlog("a", 20, 2, 1.0), Backlog("b", 0, 2, 1.0)]) == 5.0
    assert expected_wait([]) == 0.0


def test_a_copy_is_loaded_only_when_the_wait_is_longer_than_a_load() -> None:
    views = [_view("a", _runner(HOT, busy=True)), _view("b")]
    assert _decide(views, [Backlog("a", 8, 2, 1.0)]) is None  # 4 s wait < 5 s load
    decision = _decide(views, [Backlog("a", 30, 2, 1.0)])  # 15 s wait
    assert decision is not None
    assert (decision.daemon, decision.wait_s, decision.copies) == ("b", 15.0, 1)
    assert decision.plan.victims == ()
    # At the cap, no more copies.
    assert _decide(views, [Backlog("a", 30, 2, 1.0)], cap=1) is None


def test_a_copy_goes_where_it_evicts_nothing_and_never_evicts_busy_or_more_valuable() -> None:
    full = _view("b", _runner("other:latest", idle_s=5.0), budget=10 * GIB)  # must evict
    empty = _view("c")
    hot = _view("a", _runner(HOT, busy=True))
    decision = _decide([hot, full, empty], [Backlog("a", 30, 2, 1.0)])
    assert decision is not None
    assert decision.daemon == "c"
    # Only a daemon whose runner is busy: no copy (plan_room evicts idle runners only).
    busy = _view("b", _runner("other:latest", busy=True), budget=10 * GIB)
    assert _decide([hot, busy], [Backlog("a", 30, 2, 1.0)]) is None
    # A victim worth more than the wait the copy saves (15 s - 5 s) is kept.
    precious = _view("b", _runner("other:latest", idle_s=0.0), budget=10 * GIB)
    assert _decide([hot, precious], [Backlog("a", 30, 2, 1.0)], load_s=14.9) is None
    decision = _decide([hot, precious], [Backlog("a", 30, 2, 1.0)], load_s=5.0)
    assert decision is not None
    assert decision.plan.victims == ("other:latest",)


def test_a_ready_copy_takes_over_the_queues_longer_than_their_share() -> None:
    backlogs = [Backlog("a", 40, 2, 1.0), Backlog("b", 0, 2, 1.0), Backlog("c", 3, 2, 1.0)]
    # 43 waiting over 6 slots: a's share is ~14; c is within its share plus a round.
    assert rebalance(backlogs, "b") == ["a"]
    assert rebalance([Backlog("a", 2, 2, 1.0), Backlog("b", 0, 2, 1.0)], "b") == []


def test_an_idle_replica_retires_but_never_the_last_copy() -> None:
    copies = {
        HOT: [("a", 5.0, False), ("b", 120.0, True), ("c", 90.0, True)],
        "solo:latest": [("a", 999.0, True)],
        "busy:latest": [("a", 999.0, False), ("b", -1.0, True)],
    }
    out = retirements(copies, idle_s=60.0)
    assert [(r.key, r.daemon, r.copies) for r in out] == [(HOT, "b", 3)]  # longest idle first


def test_a_copy_is_worth_its_share_so_a_redundant_copy_is_evicted_first() -> None:
    # Equal in all but copies: the model loaded on three daemons goes, the only one stays.
    sole = RunnerView("sole:latest", 8 * GIB, 4096, False, False, False, 600.0, 5.0)
    copy = RunnerView(HOT, 8 * GIB, 4096, False, False, False, 30.0, 5.0, copies=3)
    view = DaemonView("a", True, frozenset(), {r.key: r for r in (sole, copy)}, 20 * GIB, 3)
    oracle = RecencyOracle()
    assert eviction_value(oracle, "a", copy) < eviction_value(oracle, "a", sole)
    plan = plan_room(view, "new:latest", 8 * GIB, lambda r: eviction_value(oracle, "a", r))
    assert isinstance(plan, RoomPlan)
    assert plan.victims == (HOT,)  # although it was used more recently


def _copy(outstanding: int, *, load_left_s: float = 0.0, service_s: float = 2.0) -> RunnerView:
    return RunnerView(
        HOT,
        8 * GIB,
        4096,
        False,
        True,
        False,
        0.0,
        5.0,
        loading=load_left_s > 0,
        copies=2,
        outstanding=outstanding,
        slots=2,
        service_s=service_s,
        load_left_s=load_left_s,
    )


def test_a_request_goes_to_the_copy_where_it_gets_a_slot_soonest() -> None:
    # 2 slots, 2 s a request: 20 ahead on the ready copy is ~20 s; the copy still
    # loading is ready in 3 s with nobody ahead.
    assert wait_s(_copy(20)) == 19 * 2.0 / 2
    assert wait_s(_copy(0, load_left_s=3.0)) == 3.0
    assert wait_s(_copy(1)) == 0.0  # a free slot
    busy_ready = _view("a", _copy(20))
    loading = _view("b", _copy(0, load_left_s=3.0))
    assert route([busy_ready, loading], HOT, Need(100), lambda v: 0, RecencyOracle()) == Serve("b")
    # ... but a copy with a long load left loses to a short queue on a ready one.
    short_queue = _view("a", _copy(3))
    slow_load = _view("b", _copy(0, load_left_s=30.0))
    assert route([short_queue, slow_load], HOT, Need(100), lambda v: 0, RecencyOracle()) == Serve(
        "a"
    )
