"""The daemon over real sockets: lifecycle, scheduler, prefix cache, host check."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ollamasim.eventlog import SimEvent
from ollamasim.testing import RunningDaemon, RunningFleet, serve_in_thread

GIB = 1024**3


def fleet_config(**daemon: Any) -> dict[str, Any]:
    return {
        "time_scale": 0.01,
        "gen_tokens_per_s": 500,
        "prefill_tokens_per_s": 100,
        "models": [
            {
                "name": "small",
                "size": 2 * GIB,
                "context_length": 8192,
                "response_tokens": 6,
                "kv_bytes_per_token": 1024,
            },
            {
                "name": "medium",
                "size": 5 * GIB,
                "context_length": 8192,
                "response_tokens": 6,
                "kv_bytes_per_token": 1024,
            },
            {"name": "large", "size": 7 * GIB, "context_length": 8192, "kv_bytes_per_token": 1024},
            {"name": "huge", "size": 40 * GIB, "context_length": 8192},
            {
                "name": "embedder",
                "size": GIB // 4,
                "capabilities": ["embedding"],
                "embedding_length": 16,
                "context_length": 512,
            },
        ],
        "daemons": [
            {
                "name": "d",
                "memory": 10 * GIB,
                "load_fixed_s": 5.0,
                "load_bandwidth": 10 * GIB,
                **daemon,
            }
        ],
    }


@pytest.fixture(scope="module")
def fleet() -> Iterator[RunningFleet]:
    with serve_in_thread(fleet_config()) as f:
        yield f


@pytest.fixture
def d(fleet: RunningFleet) -> Iterator[RunningDaemon]:
    daemon = fleet.daemon("d")
    daemon.faults.clear()
    yield daemon
    daemon.faults.clear()
    with httpx.Client(base_url=daemon.base_url) as c:
        for m in c.get("/api/ps").json()["models"]:
            c.post("/api/generate", json={"model": m["name"], "keep_alive": 0})
    daemon.wait_for_event(lambda ev: _loaded(ev) == set(), timeout=10)


def _loaded(events: list[SimEvent]) -> set[str]:
    loaded: set[str] = set()
    for e in events:
        if e.kind == "loaded" and e.model:
            loaded.add(e.model)
        elif e.kind == "unload" and e.model:
            loaded.discard(e.model)
    return loaded


def _kinds(events: list[SimEvent], since: int = 0) -> list[tuple[str, str | None, str | None]]:
    return [(e.kind, e.model, e.reason) for e in events[since:] if not e.kind.startswith("request")]


def client(d: RunningDaemon, timeout: float = 30) -> httpx.Client:
    return httpx.Client(base_url=d.base_url, timeout=timeout)


def test_load_unload_and_ps(d: RunningDaemon) -> None:
    n = len(d.events())
    with client(d) as c:
        r = c.post("/api/generate", json={"model": "small"})
        assert r.json()["done_reason"] == "load"
        ps = c.get("/api/ps").json()["models"]
        assert [m["name"] for m in ps] == ["small:latest"]
        assert ps[0]["context_length"] == 4096  # < 23 GiB VRAM tier
        assert ps[0]["size"] == 2 * GIB + 1024 * 4096
        r = c.post("/api/generate", json={"model": "small", "keep_alive": 0})
        assert r.json()["done_reason"] == "unload"
    d.wait_for_event(lambda ev: ev[-1].kind == "unload")
    assert _kinds(d.events(), n) == [
        ("load-start", "small:latest", None),
        ("loaded", "small:latest", None),
        ("unload", "small:latest", "requested"),
    ]


def test_embedding_model_rejects_generate_and_loads_via_embed(d: RunningDaemon) -> None:
    with client(d) as c:
        r = c.post("/api/generate", json={"model": "embedder"})
        assert r.status_code == 400
        assert r.json() == {"error": '"embedder" does not support generate'}
        r = c.post("/api/embed", json={"model": "embedder", "input": []})
        assert r.json() == {"model": "embedder", "embeddings": []}
        assert [m["name"] for m in c.get("/api/ps").json()["models"]] == ["embedder:latest"]


def test_keep_alive_sticks_and_pinned_expiry(d: RunningDaemon) -> None:
    with client(d) as c:
        c.post("/api/generate", json={"model": "small", "keep_alive": -1})
        exp = c.get("/api/ps").json()["models"][0]["expires_at"]
        assert int(exp[:4]) - time.gmtime().tm_year in (292, 293)
        c.post("/api/generate", json={"model": "small", "prompt": "hi", "stream": False})
        exp2 = c.get("/api/ps").json()["models"][0]["expires_at"]
        assert exp2[:4] == exp[:4]  # a request without keep_alive leaves it pinned
        c.post(
            "/v1/chat/completions",
            json={"model": "small", "messages": [{"role": "user", "content": "x"}]},
        )
        assert c.get("/api/ps").json()["models"][0]["expires_at"][:4] == exp[:4]
        r = c.post("/api/generate", json={"model": "small", "keep_alive": "300"})
        assert r.status_code == 400
        assert r.json() == {"error": 'time: missing unit in duration "300"'}


def test_keep_alive_expiry_after_idle(d: RunningDaemon) -> None:
    with client(d) as c:
        # 20 simulated seconds = 0.2 s wall
        c.post("/api/generate", json={"model": "small", "keep_alive": "20s"})
    events = d.wait_for_event(lambda ev: ev[-1].kind == "unload", timeout=5)
    assert events[-1].reason == "keep_alive-expired"


def test_reload_on_num_ctx_not_on_temperature(d: RunningDaemon) -> None:
    with client(d) as c:
        c.post("/api/generate", json={"model": "small"})
        n = len(d.events())
        r = c.post(
            "/api/generate",
            json={
                "model": "small",
                "prompt": "a",
                "stream": False,
                "options": {"temperature": 0.1, "seed": 4},
            },
        ).json()
        assert r["load_duration"] < 10**7
        assert _kinds(d.events(), n) == []
        r = c.post(
            "/api/generate",
            json={"model": "small", "prompt": "a", "stream": False, "options": {"num_ctx": 8192}},
        ).json()
        assert r["load_duration"] >= 5 * 10**9
        assert _kinds(d.events(), n) == [
            ("unload", "small:latest", "reload-options-changed"),
            ("load-start", "small:latest", None),
            ("loaded", "small:latest", None),
        ]
        assert c.get("/api/ps").json()["models"][0]["context_length"] == 8192


def test_eviction_picks_shortest_keep_alive_and_never_exceeds_memory(d: RunningDaemon) -> None:
    n = len(d.events())
    with client(d) as c:
        c.post("/api/generate", json={"model": "small", "keep_alive": "1h"})
        c.post("/api/generate", json={"model": "medium", "keep_alive": "10m"})
        c.post("/api/generate", json={"model": "large"})  # needs 7 GiB of 10: evict one
    events = d.events()[n:]
    unloads = [e for e in events if e.kind == "unload"]
    assert [(e.model, e.reason) for e in unloads] == [("medium:latest", "evicted-for-large:latest")]
    assert all(e.memory_used <= e.memory_capacity for e in events)


def test_too_big_model_fails_like_ollama(d: RunningDaemon) -> None:
    with client(d) as c:
        r = c.post("/api/generate", json={"model": "huge"})
    assert r.status_code == 500
    assert r.json() == {
        "error": "model requires more system memory (40.5 GiB) than is available (10.0 GiB)"
    }


def test_one_load_at_a_time(d: RunningDaemon) -> None:
    n = len(d.events())

    def load(path: str, body: dict[str, Any]) -> None:
        with client(d) as c:
            assert c.post(path, json=body).status_code == 200

    threads = [
        threading.Thread(target=load, args=("/api/generate", {"model": "small"})),
        threading.Thread(target=load, args=("/api/embed", {"model": "embedder", "input": []})),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seq = [e.kind for e in d.events()[n:] if e.kind in ("load-start", "loaded")]
    assert seq == ["load-start", "loaded", "load-start", "loaded"]


def test_eviction_waits_for_in_flight_request(d: RunningDaemon) -> None:
    with client(d) as c:
        c.post("/api/generate", json={"model": "medium"})
        c.post("/api/generate", json={"model": "small"})
    done = threading.Event()

    def long_stream() -> None:
        with (
            client(d) as c2,
            c2.stream(
                "POST",
                "/api/generate",
                json={"model": "medium", "prompt": "x", "options": {"num_predict": 6}},
            ) as s,
        ):
            lines = list(s.iter_lines())
            assert '"done":true' in lines[-1]
        done.set()

    d.faults.slow_load(1.0)
    t = threading.Thread(target=long_stream)
    t.start()
    d.wait_for_event(lambda ev: ev[-1].kind == "request-start")
    with client(d) as c:
        c.post("/api/generate", json={"model": "large"})  # must evict medium (small too?)
    t.join()
    assert done.is_set()
    assert not any(e.kind == "request-interrupted" for e in d.events())


def test_client_disconnect_aborts_load(d: RunningDaemon) -> None:
    d.faults.hang_load("small")
    with client(d, timeout=0.3) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/api/generate", json={"model": "small"})
    events = d.wait_for_event(lambda ev: ev[-1].kind == "load-aborted")
    assert events[-1].model == "small:latest"
    d.faults.clear()
    with client(d) as c:
        assert c.get("/api/ps").json()["models"] == []


def test_loaded_model_bypasses_queue_while_cold_load_hangs(d: RunningDaemon) -> None:
    with client(d) as c:
        c.post("/api/generate", json={"model": "small"})
    d.faults.hang_load("embedder")
    t = threading.Thread(
        target=lambda: httpx.post(
            d.base_url + "/api/embed", json={"model": "embedder", "input": []}, timeout=10
        )
    )
    t.start()
    d.wait_for_event(lambda ev: ev[-1].kind == "load-start")
    with client(d) as c:
        r = c.post("/api/generate", json={"model": "small", "prompt": "hi", "stream": False})
        assert r.status_code == 200
        assert r.json()["done"]
    d.faults.clear()
    t.join()


def test_prefix_cache_shortens_prompt_eval(d: RunningDaemon) -> None:
    system = "you are a careful assistant " * 20
    with client(d) as c:
        first = c.post(
            "/api/generate",
            json={
                "model": "small",
                "prompt": system + "question one",
                "stream": False,
                "raw": True,
            },
        ).json()
        second = c.post(
            "/api/generate",
            json={
                "model": "small",
                "prompt": system + "question two",
                "stream": False,
                "raw": True,
            },
        ).json()
    assert second["prompt_eval_count"] == first["prompt_eval_count"]  # full prompt, as Ollama
    assert second["prompt_eval_duration"] < first["prompt_eval_duration"] / 10


def test_host_check(d: RunningDaemon) -> None:
    with client(d) as c:
        assert c.get("/", headers={"Host": "evil.example.com"}).status_code == 403
        assert c.get("/", headers={"Host": "evil.example.com"}).content == b""
        assert c.get("/", headers={"Host": "localhost:11434"}).status_code == 200
        assert c.get("/", headers={"Host": "10.1.2.3"}).status_code == 200
        assert c.get("/", headers={"Host": "box.internal"}).status_code == 200


def test_max_queue_503() -> None:
    cfg = fleet_config(max_queue=1)
    with serve_in_thread(cfg) as f:
        d = f.daemon("d")
        d.faults.hang_load()
        results: list[httpx.Response] = []

        def load(m: str) -> None:
            results.append(httpx.post(d.base_url + "/api/generate", json={"model": m}, timeout=10))

        t1 = threading.Thread(target=load, args=("small",))
        t1.start()
        d.wait_for_event(lambda ev: any(e.kind == "load-start" for e in ev))
        t2 = threading.Thread(target=load, args=("medium",))  # fills the queue
        t2.start()
        time.sleep(0.1)
        r = httpx.post(d.base_url + "/api/generate", json={"model": "large"}, timeout=10)
        assert r.status_code == 503
        assert r.json() == {
            "error": "server busy, please try again.  maximum pending requests exceeded"
        }
        assert "retry-after" not in r.headers
        d.faults.clear()
        t1.join()
        t2.join()
        assert [x.status_code for x in results] == [200, 200]


def test_parallel_slots_queue_inside_runner() -> None:
    with serve_in_thread(fleet_config(num_parallel=2)) as f:
        d = f.daemon("d")
        httpx.post(d.base_url + "/api/generate", json={"model": "small"}, timeout=10)
        out: list[dict[str, Any]] = []

        def gen() -> None:
            out.append(
                httpx.post(
                    d.base_url + "/api/generate",
                    json={"model": "small", "prompt": "p", "stream": False},
                    timeout=10,
                ).json()
            )

        ts = [threading.Thread(target=gen) for _ in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert all(o["done"] for o in out)
        ps = httpx.get(d.base_url + "/api/ps").json()["models"][0]
        assert ps["size"] == 2 * GIB + 1024 * 4096 * 2  # KV for both slots


def test_event_log_is_bounded_and_counts_what_it_let_go() -> None:
    cfg = {**fleet_config(), "event_log_limit": 4}
    with serve_in_thread(cfg) as f:
        url = f.daemons[0].base_url
        for _ in range(3):  # a load, then request-start/request-end pairs
            r = httpx.post(
                f"{url}/api/generate", json={"model": "small", "prompt": "hi", "stream": False}
            )
            assert r.status_code == 200
        r = httpx.get(f"{url}/_sim/events")
        kinds = [e["kind"] for e in r.json()]
        assert len(kinds) == 4
        assert kinds[-1] == "request-end"
        total = int(r.headers["x-sim-events-dropped"]) + len(kinds)
        assert total >= 8  # load-start, loaded, 3 x (request-start, request-end)


def test_a_gpu_daemon_lists_an_unloaded_runner_until_its_memory_is_back() -> None:
    # What an H100 showed (docs/real-ollama.md): after the keep_alive 0 reply /api/ps still
    # lists the runner, expires_at = the unload; loads that need its memory, and requests
    # for the model itself, wait until it has gone. 30 simulated s = 0.3 s of wall time.
    with serve_in_thread(fleet_config(unload_linger_s=30.0)) as f:
        d = f.daemon("d")
        with client(d) as c:
            assert c.post("/api/generate", json={"model": "medium"}).status_code == 200
            r = c.post("/api/generate", json={"model": "medium", "keep_alive": 0})
            assert r.json()["done_reason"] == "unload"
            ps = c.get("/api/ps").json()["models"]
            assert [m["name"] for m in ps] == ["medium:latest"]  # not gone yet
            n = len(d.events())
            # large (7 GiB) fits 10 GiB only once medium (5 GiB) has gone; then medium again
            assert c.post("/api/generate", json={"model": "large"}).status_code == 200
            assert c.post("/api/generate", json={"model": "medium"}).status_code == 200
        assert _kinds(d.events(), n) == [
            ("unload", "medium:latest", "requested"),
            ("load-start", "large:latest", None),
            ("loaded", "large:latest", None),
            ("unload", "large:latest", "evicted-for-medium:latest"),
            ("load-start", "medium:latest", None),
            ("loaded", "medium:latest", None),
        ]
