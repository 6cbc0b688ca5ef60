"""``alb serve`` as a real process: start-up line, SIGTERM drain, simulated-fleet fallback."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._support import SIM_CONFIG

ROOT = Path(__file__).resolve().parents[3]
ALB = str(Path(sys.executable).parent / "alb")
SLOW_CONFIG = {
    **SIM_CONFIG,
    "models": [
        *SIM_CONFIG["models"],
        {"name": "slowgen", "size": 2**30, "response_tokens": 60, "gen_tokens_per_s": 1},
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        with self.p.stdout:  # the pipe is closed at EOF: the process has ended
            for line in self.p.stdout:
                self.output.append(line)
                self.lines.put(line)

    def wait_line(self, prefix: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.p.poll() is not None:
                    break
                continue
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"no line starting {prefix!r}; output:\n{''.join(self.output)}")

    def stop(self) -> None:
        """Kill the process if it still runs, and wait for the pump to close its pipe."""
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(5)
        self._pump_thread.join(5)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALB_", "OLLAMA_"))}
    env.update(extra)
    return env


@pytest.fixture
def slow_fleet() -> Iterator[RunningFleet]:
    with serve_in_thread(SLOW_CONFIG) as f:
        yield f


@pytest.fixture
def served(slow_fleet: RunningFleet) -> Iterator[tuple[Proc, str]]:
    port = _free_port()
    env = _env(ALB_DAEMONS=f"a={slow_fleet.daemon('a').base_url}", ALB_DRAIN_TIMEOUT="10")
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
    port = _free_port()
    proc = Proc(
        [ALB, "serve", "--host", "127.0.0.1", "--port", str(port)], _env(ALB_DAEMONS=f"a={secret}")
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
    port = _free_port()
    nobody = f"http://127.0.0.1:{_free_port()}"
    proc = Proc([ALB, "serve", "--sim-fallback", "--port", str(port)], _env(ALB_OLLAMA_HOST=nobody))
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
        env=_env(ALB_PORT="eighty"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert "ALB_PORT" in out.stderr
    assert "Traceback" not in out.stderr
