"""Fault injection, crash/restart, the official clients, and ``alb sim`` as a process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
import yaml

from ollamasim.streams import NDJSONFramer, SSEFramer
from ollamasim.testing import RunningDaemon, RunningFleet, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3
CONFIG = {
    "time_scale": 0.01,
    "gen_tokens_per_s": 500,
    "models": [
        {
            "name": "chatty",
            "size": GIB,
            "response_tokens": 8,
            "capabilities": ["completion", "tools"],
        },
        {"name": "vec", "size": GIB // 4, "capabilities": ["embedding"], "embedding_length": 8},
    ],
    "daemons": [{"name": "a", "memory": 8 * GIB, "load_fixed_s": 2.0}],
}


@pytest.fixture(scope="module")
def fleet() -> Iterator[RunningFleet]:
    with serve_in_thread(CONFIG) as f:
        yield f


@pytest.fixture
def d(fleet: RunningFleet) -> Iterator[RunningDaemon]:
    daemon = fleet.daemon("a")
    daemon.faults.clear()
    yield daemon
    daemon.faults.clear()


def _ndjson(d: RunningDaemon, body: dict[str, object]) -> tuple[int, list[dict[str, object]]]:
    f = NDJSONFramer()
    with httpx.stream("POST", d.base_url + "/api/chat", json=body, timeout=10) as r:
        frames = [x for chunk in r.iter_bytes() for x in f.feed(chunk)]
        f.close()
        return r.status_code, frames


CHAT = {"model": "chatty", "messages": [{"role": "user", "content": "hi"}]}


def test_error_mid_stream_is_final_error_line(d: RunningDaemon) -> None:
    d.faults.error_mid_stream(after_chunks=3, message="runner crashed")
    status, frames = _ndjson(d, CHAT)
    assert status == 200
    assert len(frames) == 4
    assert frames[-1] == {"error": "runner crashed"}
    assert not any(fr.get("done") for fr in frames)


def test_error_before_first_chunk_is_plain_500(d: RunningDaemon) -> None:
    d.faults.error_mid_stream(after_chunks=0, message="boom")
    r = httpx.post(d.base_url + "/api/chat", json=CHAT, timeout=10)
    assert r.status_code == 500
    assert r.json() == {"error": "boom"}


def test_stream_ending_without_done(d: RunningDaemon) -> None:
    d.faults.end_stream_early(after_chunks=2, model="chatty")
    status, frames = _ndjson(d, CHAT)
    assert status == 200
    assert len(frames) == 2
    assert not any(fr.get("done") for fr in frames)


def test_sse_error_mid_stream_has_no_done_marker(d: RunningDaemon) -> None:
    d.faults.error_mid_stream(after_chunks=2)
    f = SSEFramer()
    body = {**CHAT, "stream": True}
    with httpx.stream("POST", d.base_url + "/v1/chat/completions", json=body, timeout=10) as r:
        events = [x for chunk in r.iter_bytes() for x in f.feed(chunk)]
    assert r.status_code == 200
    assert "[DONE]" not in events
    assert len(events) == 3


def test_fail_next_requests(d: RunningDaemon) -> None:
    d.faults.fail_requests(count=1, status=500, message="injected")
    r1 = httpx.post(d.base_url + "/api/chat", json={**CHAT, "stream": False}, timeout=10)
    r2 = httpx.post(d.base_url + "/api/chat", json={**CHAT, "stream": False}, timeout=10)
    assert (r1.status_code, r1.json()) == (500, {"error": "injected"})
    assert r2.status_code == 200


def test_faults_over_http(d: RunningDaemon) -> None:
    r = httpx.post(d.base_url + "/_sim/faults", json={"slow_load": {"factor": 3}}, timeout=5)
    assert r.json()["slow_load"] == {"*": 3.0}
    assert d.faults.load_factor("chatty") == 3.0
    httpx.delete(d.base_url + "/_sim/faults", timeout=5)
    assert d.faults.load_factor("chatty") == 1.0
    events = httpx.get(d.base_url + "/_sim/events", timeout=5).json()
    assert isinstance(events, list)


def test_crash_and_restart(fleet: RunningFleet) -> None:
    d = fleet.daemon("a")
    httpx.post(d.base_url + "/api/generate", json={"model": "chatty"}, timeout=10)
    d.crash()
    with pytest.raises(httpx.ConnectError):
        httpx.get(d.base_url + "/", timeout=2)
    d.restart()
    assert httpx.get(d.base_url + "/", timeout=2).text == "Ollama is running"
    assert httpx.get(d.base_url + "/api/ps", timeout=2).json() == {"models": []}
    kinds = [e.kind for e in d.events()]
    assert kinds.index("crash") < kinds.index("restart")


def test_crash_drops_waiting_connections(fleet: RunningFleet) -> None:
    d = fleet.daemon("a")
    d.faults.hang_load("vec")
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(d.base_url + "/api/embed", json={"model": "vec", "input": "x"}, timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    d.wait_for_event(lambda ev: ev[-1].kind == "load-start" and ev[-1].model == "vec:latest")
    try:
        d.crash()
        t.join(timeout=10)
        assert len(errors) == 1
    finally:
        d.faults.clear()
        d.restart()


def test_official_ollama_client(fleet: RunningFleet) -> None:
    d = fleet.daemon("a")
    with ollama.Client(host=d.base_url) as c:
        names = [m.model for m in c.list().models]
        assert names == ["chatty:latest", "vec:latest"]
        loaded = c.generate(model="chatty", prompt="")
        assert loaded.done_reason == "load"
        parts = list(
            c.chat(model="chatty", messages=[{"role": "user", "content": "hi"}], stream=True)
        )
        assert parts[-1].done
        assert parts[-1].eval_count == 8
        assert "".join(p.message.content or "" for p in parts)
        emb = c.embed(model="vec", input=["a", "b"])
        assert len(emb.embeddings) == 2
        assert len(emb.embeddings[0]) == 8
        assert {m.model for m in c.ps().models} == {"chatty:latest", "vec:latest"}
        with pytest.raises(ollama.ResponseError) as exc:
            c.chat(model="missing", messages=[{"role": "user", "content": "x"}])
        assert exc.value.status_code == 404


def test_official_openai_client(fleet: RunningFleet) -> None:
    d = fleet.daemon("a")
    with openai.OpenAI(base_url=d.base_url + "/v1", api_key="ollama") as c:
        out = c.chat.completions.create(
            model="chatty", messages=[{"role": "user", "content": "hi"}]
        )
        assert out.choices[0].finish_reason == "stop"
        assert out.usage is not None
        chunks = list(
            c.chat.completions.create(
                model="chatty", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        assert chunks[-1].choices[0].finish_reason == "stop"
        emb = c.embeddings.create(model="vec", input="hello")
        assert len(emb.data[0].embedding) == 8
        assert [m.id for m in c.models.list().data] == ["chatty:latest", "vec:latest"]
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_alb_sim_cli_serves_example_fleet(tmp_path: Path) -> None:
    cfg = yaml.safe_load((ROOT / "examples" / "fleet.yaml").read_text())
    for dcfg in cfg["daemons"]:
        dcfg["port"] = 0
    cfg["time_scale"] = 0.001
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    alb = Path(sys.executable).parent / "alb"
    cmd = [str(alb)] if alb.exists() else [sys.executable, "-m", "alb.cli"]
    with subprocess.Popen(
        [*cmd, "sim", "--config", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            urls = {}
            deadline = time.monotonic() + 20
            while len(urls) < 2 and time.monotonic() < deadline:
                line = proc.stdout.readline()
                m = re.match(r"daemon (\S+) listening on (http://\S+)", line)
                if m:
                    urls[m.group(1)] = m.group(2)
            assert set(urls) == {"gpu0", "gpu1"}
            with ollama.Client(host=urls["gpu1"]) as c:
                assert [m.model for m in c.list().models] == [
                    "llama3.2:3b",
                    "nomic-embed-text:latest",
                ]
                assert c.generate(model="llama3.2:3b", prompt="").done_reason == "load"
                text = "".join(
                    p.message.content or ""
                    for p in c.chat(
                        model="llama3.2:3b",
                        messages=[{"role": "user", "content": "hi"}],
                        stream=True,
                    )
                )
                assert text
                assert len(c.embed(model="nomic-embed-text", input="x").embeddings[0]) == 768
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
