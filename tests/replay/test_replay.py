"""The replay DES: determinism, conservation, Ollama's scheduler, the bridge's policies."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from bridge.settings import Settings
from ollamasim.config import FleetConfig
from predictor.traces.format import DEFAULT_EPOCH, TraceRecord
from predictor.traces.synth import SynthParams, synthesize
from replay.bridge_fleet import BridgeFleet
from replay.des import BridgeKnobs, Clients, Job, Runner, Simulation
from replay.fleets import SYNTH_SIZES_GB, make_fleet
from replay.ollama_fleet import OllamaFleet, static_assignment
from replay.policies import OURS, POLICIES, VARIANTS
from replay.report import ReplayReport
from replay.simulate import new_simulation, simulate
from replay.workload import Request, requests_from_records

GB = 10**9
NAMES = [f"model-{i:02d}" for i in range(12)]


def _synth(seed: int, duration_s: float = 900.0, spm: float = 5.0) -> list[Request]:
    params = SynthParams(seed=seed, duration_s=duration_s, sessions_per_minute=spm)
    return requests_from_records(synthesize(params))


def _fleet() -> FleetConfig:
    return make_fleet(NAMES, SYNTH_SIZES_GB)


def _req(idx: int, t: float, model: str, **kw: Any) -> Request:
    base: dict[str, Any] = {
        "session": "s",
        "prompt_tokens": 100,
        "output_tokens": 60,
        "num_ctx": None,
        "openai": False,
    }
    base.update(kw)
    return Request(idx, t, f"{model}:latest", **base)


def _one_daemon(models: dict[str, float], **daemon: Any) -> FleetConfig:
    return FleetConfig.model_validate(
        {
            "gen_tokens_per_s": 60.0,
            "prefill_tokens_per_s": 1000.0,
            "models": [{"name": n, "size": int(s * GB)} for n, s in models.items()],
            "daemons": [{"name": "d0", "memory": "24GB", "load_fixed_s": 1.0, **daemon}],
        }
    )


# --- determinism and conservation ------------------------------------------------------
@pytest.mark.parametrize("policy", ["ollama", "bridge-lru", "ours"])
def test_same_seed_same_metrics(policy: str) -> None:
    a = simulate(_fleet(), POLICIES[policy], _synth(7))
    b = simulate(_fleet(), POLICIES[policy], _synth(7))
    assert a == b
    assert a.as_dict() != simulate(_fleet(), POLICIES[policy], _synth(8)).as_dict()


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_request_ends_exactly_once_and_memory_stays_under_capacity(policy: str) -> None:
    requests = _synth(11, spm=8.0)
    sim = new_simulation(_fleet(), POLICIES[policy], requests)
    ended: Counter[int] = Counter()
    finish, fail = sim._finish, sim.fail

    def on_finish(job: Job, runner: Runner) -> None:
        ended[job.req.idx] += 1
        assert runner.ready
        assert runner.size <= sim.daemon_cfg[runner.daemon].memory
        finish(job, runner)

    def on_fail(job: Job, status: int, retry_after: float | None = None) -> None:
        ended[job.req.idx] += 1
        fail(job, status, retry_after)

    sim._finish = on_finish  # type: ignore[method-assign]
    sim.fail = on_fail  # type: ignore[method-assign]
    report = sim.run()  # the DES itself raises if any daemon goes above its capacity
    assert set(ended) == {r.idx for r in requests}
    assert set(ended.values()) == {1}
    assert report.completed + report.errors == report.requests == len(requests)
    assert report.max_memory_share <= 1.0
    if POLICIES[policy].kind == "bridge":
        assert report.max_memory_share <= 1 - BridgeKnobs().headroom + 1e-9
    assert len(report_latencies := sim.tally.latencies) == report.completed
    assert all(lat > 0 for lat in report_latencies)


# --- Ollama's scheduler ----------------------------------------------------------------------
def test_ollama_keep_alive_expires_after_five_minutes() -> None:
    fleet = _one_daemon({"a": 2.0})
    requests = [_req(0, 0.0, "a"), _req(1, 200.0, "a"), _req(2, 200.0 + 1.0 + 301.0, "a")]
    sim = new_simulation(fleet, POLICIES["ollama"], requests)
    colds: list[bool] = []
    start = sim.start

    def on_start(job: Job, runner: Runner) -> None:
        colds.append(job.cold)
        start(job, runner)

    sim.start = on_start  # type: ignore[method-assign]
    report = sim.run()
    # Cold, warm (within 5 min of the last request's end), cold again (expired).
    assert colds == [True, False, True]
    assert report.loads == 2
    assert sim.tally.idle_unloads == 1


def test_ollama_evicts_the_shortest_keep_alive_not_the_least_recently_used() -> None:
    fleet = _one_daemon({"a": 8.0, "b": 8.0, "c": 8.0})
    requests = [_req(0, 0.0, "a"), _req(1, 10.0, "b"), _req(2, 20.0, "a"), _req(3, 40.0, "c")]
    sim = new_simulation(fleet, POLICIES["ollama"], requests)
    ctl = sim.controller
    assert isinstance(ctl, OllamaFleet)
    evicted: list[str] = []
    unload = ctl._unload

    def on_unload(d: Any, r: Runner, *, evicted: bool, kick: bool = True) -> None:
        if evicted:
            evicted_models.append(r.model)
        unload(d, r, evicted=evicted, kick=kick)

    evicted_models = evicted
    ctl._unload = on_unload  # type: ignore[method-assign]
    sim.run()
    # Equal keep_alive: sorted by name, so "a" goes although "b" is the least recently used.
    assert evicted == ["a:latest"]

    # A client gave "a" a longer keep_alive (sticky): now "b" is the shortest and goes.
    sim = new_simulation(fleet, POLICIES["ollama"], requests)
    ctl = sim.controller
    assert isinstance(ctl, OllamaFleet)
    evicted.clear()
    unload = ctl._unload
    ctl._unload = on_unload  # type: ignore[method-assign]

    def longer() -> None:
        ctl.daemons["d0"].runners["a:latest"].keep_alive_s = 3600.0

    sim.at(30.0, longer)
    sim.run()
    assert evicted == ["b:latest"]


def test_ollama_cold_load_blocks_other_cold_loads_on_the_daemon() -> None:
    fleet = _one_daemon({"a": 10.0, "b": 2.0}, load_bandwidth="1GB")
    requests = [_req(0, 0.0, "a"), _req(1, 0.5, "b")]
    sim = new_simulation(fleet, POLICIES["ollama"], requests)
    starts: dict[str, float] = {}
    start = sim.start

    def on_start(job: Job, runner: Runner) -> None:
        starts[runner.model] = sim.now
        start(job, runner)

    sim.start = on_start  # type: ignore[method-assign]
    sim.run()
    assert starts["a:latest"] == pytest.approx(11.0)  # 1 s + 10 GB at 1 GB/s
    assert starts["b:latest"] == pytest.approx(11.0 + 3.0)  # only after a's load


def test_ollama_answers_503_when_its_pending_queue_is_full() -> None:
    # OLLAMA_MAX_QUEUE=2: a loads (taken off the queue), b and c wait for a's load and
    # fill the queue, d is refused; e is for the runner being loaded, which is not
    # ready either, so it queues too and is refused the same way. Nothing is lost: every
    # request ends exactly once.
    fleet = _one_daemon({"a": 10.0, "b": 2.0, "c": 2.0, "d": 2.0}, max_queue=2)
    requests = [
        _req(0, 0.0, "a"),
        _req(1, 0.1, "b"),
        _req(2, 0.2, "c"),
        _req(3, 0.3, "d"),
        _req(4, 0.4, "a"),
    ]
    # Clients that do not retry: what the daemon answers, each request once.
    sim = new_simulation(fleet, POLICIES["ollama"], requests, clients=Clients(retries=0))
    failed: list[tuple[str, int]] = []
    fail = sim.fail

    def on_fail(job: Job, status: int, retry_after: float | None = None) -> None:
        failed.append((job.req.model, status))
        fail(job, status, retry_after)

    sim.fail = on_fail  # type: ignore[method-assign]
    report = sim.run()
    assert failed == [("d:latest", 503), ("a:latest", 503)]
    assert report.completed == 3
    assert report.errors == 2
    assert report.refused_final == 2


def test_a_refused_client_retries_after_a_backoff_and_its_latency_includes_the_waits() -> None:
    # The same 503s, with the openai client's two retries (0.5 s, then 1 s: no
    # Retry-After from Ollama): d and the second a get in once the queue drains.
    fleet = _one_daemon({"a": 10.0, "b": 2.0, "c": 2.0, "d": 2.0}, max_queue=2)
    requests = [
        _req(0, 0.0, "a"),
        _req(1, 0.1, "b"),
        _req(2, 0.2, "c"),
        _req(3, 0.3, "d"),
        _req(4, 0.4, "a"),
    ]

    def run(retries: int) -> tuple[list[tuple[str, float]], ReplayReport]:
        sim = new_simulation(fleet, POLICIES["ollama"], requests, clients=Clients(retries))
        tries: list[tuple[str, float]] = []
        submit = sim.controller.submit

        def on_submit(job: Job) -> None:
            tries.append((job.req.model, round(sim.now, 3)))
            submit(job)

        sim.controller.submit = on_submit  # type: ignore[method-assign]
        return tries, sim.run()

    tries, report = run(2)
    # a's 10 GB load takes 6 s, so the queue stays full through both retries.
    assert [t for m, t in tries if m == "d:latest"] == [0.3, 0.8, 1.8]
    assert [t for m, t in tries if m == "a:latest"] == [0.0, 0.4, 0.9, 1.9]
    assert (report.retries, report.refused_final, report.completed) == (4, 2, 3)
    # Five retries (0.5 + 1 + 2 + 4 s of backoff) outlast the load: every request is
    # served, and a retried one's latency counts its waits from its first try.
    _, report = run(5)
    assert (report.refused_final, report.errors, report.completed) == (0, 0, 5)
    assert report.retries == 8
    assert report.p99_latency_s > 10.0


def test_the_bridges_refusal_at_the_high_water_mark_says_what_the_scheduler_would() -> None:
    # Three clients wait for a's load at a high-water depth of 3; the fourth is refused
    # with the scheduler's Retry-After (``queueing.retry_hint``): when the first seat
    # frees, from what the bridge estimates is left of the load (its 10 s default, less
    # the 0.3 s gone) and one departure at 2 slots of the 1 s service prior, 9.7 + 0.5,
    # rounded up. It is not the simulated truth (a 1 s + 10 GB load, the request's own
    # 1.1 s service).
    fleet = _one_daemon({"a": 10.0}, num_parallel=2)
    requests = [_req(i, i / 10, "a") for i in range(4)]
    sim = new_simulation(
        fleet,
        POLICIES["bridge-lru"],
        requests,
        knobs=BridgeKnobs(high_water_depth=3),
        clients=Clients(retries=0),
    )
    refused: list[tuple[int, int, float | None]] = []
    fail = sim.fail

    def on_fail(job: Job, status: int, retry_after: float | None = None) -> None:
        refused.append((job.req.idx, status, retry_after))
        fail(job, status, retry_after)

    sim.fail = on_fail  # type: ignore[method-assign]
    report = sim.run()
    assert refused == [(3, 503, 11.0)]
    assert (report.completed, report.refused_final) == (3, 1)


def test_the_replayed_clients_retry_as_the_openai_client_does() -> None:
    # Its defaults: two retries, and a Retry-After past two minutes is not waited for
    # (``_should_retry``): the refusal is final at once.
    from openai._constants import DEFAULT_MAX_RETRIES, MAX_RETRY_AFTER_DELAY  # noqa: PLC0415

    clients = Clients()
    assert (clients.retries, clients.max_retry_after_s) == (
        DEFAULT_MAX_RETRIES,
        MAX_RETRY_AFTER_DELAY,
    )
    assert clients.retries_after(1, 120.0)
    assert clients.retries_after(2, None)
    assert not clients.retries_after(1, 121.0)
    assert not clients.retries_after(3, 1.0)
    assert [clients.wait_s(n, None) for n in (1, 2, 3, 6)] == [0.5, 1.0, 2.0, 8.0]


def test_static_assignment_balances_bytes() -> None:
    home = static_assignment(_fleet())
    per: Counter[str] = Counter()
    for m in _fleet().models:
        per[home[m.key]] += m.size
    assert len(per) == 3
    assert max(per.values()) - min(per.values()) <= 9 * GB


# --- the bridge's policies ----------------------------------------------------------------
@pytest.mark.parametrize("policy", ["bridge-lru", "seed", "histogram", "ours"])
def test_bridge_policies_never_evict_a_busy_model(policy: str) -> None:
    sim = new_simulation(_fleet(), POLICIES[policy], _synth(5, spm=8.0))
    ctl = sim.controller
    assert isinstance(ctl, BridgeFleet)
    execute = ctl._execute
    seen = 0

    def on_execute(d: Any, op: Any) -> None:
        nonlocal seen
        for victim in op.plan.victims:
            seen += 1
            r = d.runners[victim]
            assert r.active == 0, f"{victim} evicted with requests in flight"
            assert not d.gates.get(victim), f"{victim} evicted with requests queued"
            assert r.ready
        execute(d, op)

    ctl._execute = on_execute  # type: ignore[method-assign]
    sim.run()
    assert seen > 0


def test_bridge_reuses_a_big_enough_runner_instead_of_reloading() -> None:
    fleet = _one_daemon({"a": 2.0})
    # 8192 first, then smaller asks: all fit the 8192 runner (Ollama would reload twice).
    requests = [
        _req(0, 0.0, "a", num_ctx=8192),
        _req(1, 30.0, "a", num_ctx=2048),
        _req(2, 60.0, "a", num_ctx=4096),
    ]
    bridge = simulate(fleet, POLICIES["bridge-lru"], requests)
    ollama = simulate(fleet, POLICIES["ollama"], requests)
    assert (bridge.loads, bridge.reloads) == (1, 0)
    assert ollama.loads == 3


def test_prefetch_loads_the_predicted_model_before_it_is_asked_for() -> None:
    fleet = _one_daemon({"a": 2.0, "b": 2.0, "c": 2.0, "d": 2.0}, max_loaded_models=2)
    requests: list[Request] = []
    t = 0.0
    for k in range(12):  # sessions go a -> b, 30 s apart; c and d push b out meanwhile
        requests.append(_req(len(requests), t, "a", session=f"s{k}"))
        requests.append(_req(len(requests), t + 30.0, "b", session=f"s{k}"))
        requests.append(_req(len(requests), t + 60.0, "c", session=f"x{k}"))
        requests.append(_req(len(requests), t + 90.0, "d", session=f"y{k}"))
        t += 120.0
    requests.sort(key=lambda r: r.t)
    requests = [Request(i, r.t, *_fields(r)) for i, r in enumerate(requests)]
    ours = simulate(fleet, POLICIES["ours"].__class__(**{**_spec(POLICIES["ours"])}), requests)
    lru = simulate(fleet, POLICIES["bridge-lru"], requests)
    assert ours.prefetch_hits > 0
    assert ours.cold_start_rate < lru.cold_start_rate
    # unload_below = 1 unloads every idle runner the moment it goes idle, except one a
    # prefetch loaded that nothing has used yet: the prefetches still hit
    eager = dataclasses.replace(POLICIES["ours"], predictor=OURS.replace(unload_below=1.0))
    lean = simulate(fleet, eager, requests)
    assert lean.prefetch_hits == ours.prefetch_hits


def _fields(r: Request) -> tuple[Any, ...]:
    return (r.model, r.session, r.prompt_tokens, r.output_tokens, r.num_ctx, r.openai)


def _spec(p: Any) -> dict[str, Any]:
    return {
        "name": p.name,
        "kind": p.kind,
        "predictor": OURS.replace(confidence_threshold=0.5),
        "oracle": p.oracle,
        "keep_alive": p.keep_alive,
    }


# --- the five policies, quickly ----------------------------------------------------------------
def test_seven_policies_on_a_short_synthetic_trace_finish_quickly() -> None:
    requests = _synth(1, duration_s=1200.0, spm=6.0)
    fleet = _fleet()
    t0 = time.perf_counter()
    reports = [simulate(fleet, spec, requests) for spec in POLICIES.values()]
    assert time.perf_counter() - t0 < 20.0
    assert [r.policy for r in reports] == [
        "ollama",
        "ollama-forever",
        "ollama-max-queue",
        "bridge-lru",
        "seed",
        "histogram",
        "ours",
    ]
    for r in reports:
        assert r.completed + r.errors == len(requests)
        assert 0.0 <= r.cold_start_rate <= 1.0
        assert r.p50_latency_s <= r.p99_latency_s
        assert r.idle_gb_h >= 0.0
    assert reports[0].prefetch_loads == 0  # Ollama never prefetches


@pytest.mark.parametrize("policy", ["ollama", "ours"])
def test_the_idle_anatomy_accounts_for_the_reports_idle_memory(policy: str) -> None:
    from bench.idle_anatomy import ENDS, STATES, Anatomy  # noqa: PLC0415

    anatomy = Anatomy()
    sim = new_simulation(_fleet(), POLICIES[policy], _synth(3), observer=anatomy)
    report = sim.run()
    anatomy.finish(sim.now)
    idle = anatomy.byte_s["idle"]
    assert idle == pytest.approx(report.idle_gb_h * 1e9 * 3600, rel=1e-9)
    assert sum(anatomy.byte_s[f"idle:{e}"] for e in ENDS) == pytest.approx(idle, rel=1e-9)
    assert all(anatomy.byte_s[s] > 0 for s in STATES)
    assert anatomy.spells["reused"] > 0
    assert anatomy.spells["evicted"] > 0


def test_workload_times_are_relative_and_ordered() -> None:
    recs = [
        TraceRecord(
            ts=DEFAULT_EPOCH + timedelta(seconds=s),
            session=None,
            model="m",
            endpoint="/v1/chat/completions",
            api="openai",
            prompt_tokens=None,
            output_tokens=None,
            system_prompt_hash=None,
            prefix_hash=None,
            num_ctx=None,
            stream=False,
        )
        for s in (5.0, 1.0, 3.0)
    ]
    reqs = requests_from_records(recs)
    assert [r.t for r in reqs] == [0.0, 2.0, 4.0]
    assert reqs[0].model == "m:latest"
    assert reqs[0].openai
    assert reqs[0].prompt_tokens > 0


def test_bridge_knobs_match_the_bridge_settings_defaults() -> None:
    fields = Settings.model_fields
    knobs = BridgeKnobs()
    assert knobs.headroom == fields["headroom"].default
    assert knobs.num_predict_default == fields["num_predict_default"].default
    assert knobs.chars_per_token == fields["chars_per_token"].default
    assert knobs.retry_after_max == fields["retry_after_max"].default
    assert ",".join(map(str, knobs.buckets)) == fields["num_ctx_buckets"].default
    assert POLICIES["bridge-lru"].idle_unload_after_s == fields["idle_unload_after"].default


def _colds(sim: Simulation) -> list[tuple[str, bool]]:
    """Run ``sim``; each request's (model, cold) in the order they got a slot."""
    colds: list[tuple[str, bool]] = []
    start = sim.start

    def on_start(job: Job, runner: Runner) -> None:
        colds.append((job.req.model, job.cold))
        start(job, runner)

    sim.start = on_start  # type: ignore[method-assign]
    sim.run()
    return colds


@pytest.mark.parametrize("policy", ["bridge-lru", "ours"])
def test_an_ample_fleet_keeps_an_idle_model_for_an_hour_until_a_load_needs_its_room(
    policy: str,
) -> None:
    # 24 GB (21.6 under the headroom): room for a and b, and for c beside one of them.
    fleet = _one_daemon({"a": 4.0, "b": 4.0, "c": 16.0})
    requests = [_req(0, 0.0, "a"), _req(1, 3700.0, "a"), _req(2, 3800.0, "b")]
    requests.append(_req(3, 3900.0, "c"))
    sim = new_simulation(fleet, POLICIES[policy], requests)
    # An hour idle and still loaded: warm; b fits beside it; c needs the room of one.
    assert _colds(sim) == [
        ("a:latest", True),
        ("a:latest", False),
        ("b:latest", True),
        ("c:latest", True),
    ]
    assert sim.tally.idle_unloads == 0
    ctl = sim.controller
    assert isinstance(ctl, BridgeFleet)
    evicted = [d.model for d in ctl.decisions if d.kind == "evict"]
    assert evicted == ["a:latest"]  # the least recently used goes, when c needs room
    # The reclaim variant unloads a after ALB_IDLE_UNLOAD_AFTER (1800 s): cold again.
    sim = new_simulation(fleet, VARIANTS[f"{policy}-reclaim"], requests)
    assert _colds(sim)[1] == ("a:latest", True)
    assert sim.tally.idle_unloads >= 1


def test_ollama_cuts_a_long_prompt_to_its_context_and_the_bridge_loads_one_that_fits() -> None:
    """Ollama's default context (4096 on a 24 GB daemon) serves a 6,000-token prompt cut
    short; the bridge loads a runner with room for it. Short prompts are cut by neither."""
    fleet = _one_daemon({"m": 2.0})
    requests = [
        _req(0, 0.0, "m"),
        _req(1, 10.0, "m", prompt_tokens=6000),
        _req(2, 20.0, "m", prompt_tokens=6000),
        _req(3, 30.0, "m"),
    ]
    ollama = simulate(fleet, POLICIES["ollama"], requests)
    ours = simulate(fleet, POLICIES["ours"], requests)
    assert ollama.completed == ours.completed == 4
    assert ollama.truncated_rate == pytest.approx(0.5)
    assert ours.truncated_rate == 0.0


def test_a_burst_counts_the_requests_that_chose_a_loading_copy_over_a_ready_one() -> None:
    """A burst for one model on four daemons: copies are loaded, and requests that join
    a copy still loading, while the first runner is ready, are cold by choice (their
    expected wait there was shorter). Without copies there are none."""
    fleet = FleetConfig.model_validate(
        {
            "gen_tokens_per_s": 20.0,
            "prefill_tokens_per_s": 1000.0,
            "models": [{"name": "m", "size": int(2 * GB)}],
            "daemons": [
                {"name": f"d{i}", "memory": "24GB", "load_fixed_s": 2.0, "num_parallel": 2}
                for i in range(4)
            ],
        }
    )
    burst = [_req(0, 0.0, "m")] + [
        _req(i, 30.0 + i * 0.01, "m", output_tokens=200) for i in range(1, 200)
    ]
    with_copies = simulate(fleet, POLICIES["ours"], burst)
    without = simulate(fleet, VARIANTS["ours-norepl"], burst)
    assert with_copies.replica_loads >= 1
    assert 0 < with_copies.cold_ready_copy_rate <= with_copies.cold_start_rate
    parts = (
        with_copies.cold_first_rate
        + with_copies.cold_gone_rate
        + with_copies.cold_context_rate
        + with_copies.cold_ready_copy_rate
    )
    assert parts == pytest.approx(with_copies.cold_start_rate)
    assert without.replica_loads == 0
    assert without.cold_ready_copy_rate == 0.0
    assert with_copies.p99_ttft_s < without.p99_ttft_s


@pytest.mark.parametrize("policy", ["ollama", "bridge-lru", "ours"])
def test_cold_starts_are_split_by_cause(policy: str) -> None:
    """Two 12 GB models on one 24 GB daemon evict each other. The first loads (and a
    request that joins one) are ``first``; a model back after its eviction is ``gone``;
    a larger num_ctx than the ready runner's is ``context`` (Ollama reloads, as the
    bridge does); the causes add up to the cold-start rate."""
    fleet = _one_daemon({"a": 12.0, "b": 12.0})
    requests = [
        _req(0, 0.0, "a"),
        _req(1, 0.01, "a"),  # joins a's first load
        _req(2, 100.0, "b"),  # evicts a
        _req(3, 200.0, "a"),  # a is gone: loaded again
        _req(4, 250.0, "a"),  # warm
        _req(5, 300.0, "a", num_ctx=16384),  # a ready, at too small a context
    ]
    report = simulate(fleet, POLICIES[policy], requests)
    assert report.completed == 6
    assert report.cold_first_rate == pytest.approx(3 / 6)
    assert report.cold_gone_rate == pytest.approx(1 / 6)
    assert report.cold_context_rate == pytest.approx(1 / 6)
    assert report.cold_ready_copy_rate == 0.0
    parts = (
        report.cold_first_rate
        + report.cold_gone_rate
        + report.cold_context_rate
        + report.cold_ready_copy_rate
    )
    assert parts == pytest.approx(report.cold_start_rate)
