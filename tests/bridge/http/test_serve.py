"""``alb serve`` as a real process: start-up line, SIGTERM drain, simulated-fleet fallback."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import ollama
import pytest

from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._procs import ALB, Proc, clean_env, free_port
from tests.bridge._support import SIM_CONFIG

SLOW_CONFIG = {
    **SIM_CONFIG,
    "models": [
        *SIM_CONFIG["models"],
        {"name": "slowgen", "size": 2**30, "response_tokens": 60, "gen_tokens_per_s": 1},
    ],
}


@pytest.fixture
def slow_fleet() -> Iterator[RunningFleet]:
    with serve_in_thread(SLOW_CONFIG) as f:
        yield f


@pytest.fixture
def served(slow_fleet: RunningFleet) -> Iterator[tuple[Proc, str]]:
    port = free_port()
    env = clean_env(ALB_DAEMONS=f"a={slow_fleet.daemon('a').base_url}", ALB_DRAIN_TIMEOUT="10")
    proc = Proc([ALB, "serve", "--host", "127.0.0.1", "--port", str(port)], env)
    try:
        line = proc.wait_line("bridge listening on")
        assert line == f"bridge listening on http://127.0.0.1:{port}"
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def test_serve_answers_the_official_client(served: tuple[Proc, str]) -> None:
    proc, url = served
    with ollama.Client(host=url) as c:
        reply = c.chat(model="chatty", messages=[{"role": "user", "content": "x"}])
    assert reply.done
    assert "daemon a: http://127.0.0.1:" in "".join(proc.output)


def test_sigterm_lets_in_flight_streams_finish(served: tuple[Proc, str]) -> None:
    proc, url = served
    body = {"model": "slowgen", "messages": [{"role": "user", "content": "go"}]}
    got = b""
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=20) as r:
        for chunk in r.iter_raw():
            if not got:
                proc.p.send_signal(signal.SIGTERM)
                time.sleep(0.2)
                with pytest.raises(httpx.ConnectError):
                    httpx.get(url + "/healthz", timeout=2)
            got += chunk
    assert r.status_code == 200
    assert b'"done":true' in got.splitlines()[-1]
    assert proc.p.wait(15) == 0


def test_the_banner_masks_a_daemon_urls_credentials(fleet: RunningFleet) -> None:
    """Issue #12, finding 9: ``http://alice:hunter2@127.0.0.1:PORT`` was mangled into
    ``…:PORT:11434`` and the password shown in the banner. The banner shows the URL as
    ``http://***@127.0.0.1:PORT``, and the daemon is reached at that port."""
    sim = fleet.daemon("a").base_url  # http://127.0.0.1:PORT
    secret = sim.replace("http://", "http://alice:hunter2@", 1)
    port = free_port()
    proc = Proc(
        [ALB, "serve", "--host", "127.0.0.1", "--port", str(port)],
        clean_env(ALB_DAEMONS=f"a={secret}"),
    )
    try:
        proc.wait_line("bridge listening on")
        banner = "".join(proc.output)
        daemon_lines = [line.strip() for line in proc.output if "daemon a:" in line]
        masked = sim.replace("http://", "http://***@", 1)
        assert "hunter2" not in banner
        assert "alice" not in banner
        assert len(daemon_lines) == 1, banner
        assert daemon_lines[0].startswith(f"daemon a: {masked} ("), banner
        with ollama.Client(host=f"http://127.0.0.1:{port}") as c:
            reply = c.generate(model="chatty", prompt="x")
        assert reply.done
        assert "hunter2" not in "".join(proc.output)
    finally:
        proc.stop()


def test_make_run_falls_back_to_a_simulated_fleet_and_says_so() -> None:
    port = free_port()
    nobody = f"http://127.0.0.1:{free_port()}"
    proc = Proc(
        [ALB, "serve", "--sim-fallback", "--port", str(port)], clean_env(ALB_OLLAMA_HOST=nobody)
    )
    try:
        proc.wait_line("bridge listening on")
        banner = "".join(proc.output)
        assert "SIMULATED FLEET" in banner
        assert "examples/fleet.yaml" in banner
        with ollama.Client(host=f"http://127.0.0.1:{port}") as c:
            models = c.list()
        assert "llama3.2:3b" in {m.model for m in models.models}
        proc.p.send_signal(signal.SIGTERM)
        assert proc.p.wait(15) == 0
    finally:
        proc.stop()


def test_a_bad_setting_fails_fast_naming_it() -> None:
    out = subprocess.run(
        [ALB, "serve"],
        env=clean_env(ALB_PORT="eighty"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert "ALB_PORT" in out.stderr
    assert "Traceback" not in out.stderr
