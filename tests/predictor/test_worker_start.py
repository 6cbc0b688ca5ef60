"""``alb predictor`` refuses bad input with one line and exit 2, never a traceback.

The preflight (:mod:`predictor.stream.preflight`) asks Kafka before Faust starts; these
tests run the real console script as a new user would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from predictor.stream.preflight import KafkaUnreachable, check_kafka
from predictor.stream.settings import SettingsError, load_settings, split_servers
from tests.services._env import free_port

ALB = str(Path(sys.executable).parent / "alb")


def _alb_predictor(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ALB_PREDICTOR_")}
    environ.update(env, ALB_PREDICTOR_DATADIR=str(tmp_path / "data"))
    return subprocess.run(
        [ALB, "predictor"],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_closed_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    port = free_port()  # bound a moment ago, closed now: connection refused
    done = _alb_predictor(
        tmp_path,
        ALB_PREDICTOR_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
        ALB_PREDICTOR_PREFLIGHT_TIMEOUT_S="5",
    )
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "Traceback" not in out
    assert done.stderr.strip().splitlines() == [
        f"alb predictor: cannot reach Kafka at 127.0.0.1:{port} (Connection refused)"
    ]


def test_a_malformed_server_names_the_variable(tmp_path: Path) -> None:
    done = _alb_predictor(tmp_path, ALB_PREDICTOR_BOOTSTRAP_SERVERS="kafka:ninety")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.startswith("alb predictor: ALB_PREDICTOR_BOOTSTRAP_SERVERS: ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_split_servers() -> None:
    assert split_servers("a:1, b:2,") == [("a", 1), ("b", 2)]
    assert split_servers("kafka://h") == [("h", 9092)]
    assert split_servers("[::1]:9093,[::1]") == [("::1", 9093), ("::1", 9092)]
    for bad in ("", " , ", "h:x", "h:0", ":9092", "h:70000"):
        with pytest.raises(ValueError):  # noqa: PT011 (the message is checked below)
            split_servers(bad)
    with pytest.raises(SettingsError, match=r"ALB_PREDICTOR_BOOTSTRAP_SERVERS: .*'h:x'"):
        load_settings({"ALB_PREDICTOR_BOOTSTRAP_SERVERS": "h:x"})
    with pytest.raises(SettingsError, match="ALB_PREDICTOR_PREFLIGHT_TIMEOUT_S"):
        load_settings({"ALB_PREDICTOR_PREFLIGHT_TIMEOUT_S": "0"})


@pytest.fixture
def not_kafka() -> Iterator[int]:
    """A port that accepts connections and closes them at once (open, but not Kafka)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        server.close()


async def test_an_open_port_that_is_not_kafka(not_kafka: int) -> None:
    with pytest.raises(KafkaUnreachable, match="port is open but did not answer as Kafka"):
        await check_kafka(f"127.0.0.1:{not_kafka}", timeout_s=3.0)


async def test_each_server_gets_its_reason() -> None:
    a, b = free_port(), free_port()
    with pytest.raises(KafkaUnreachable) as info:
        await check_kafka(f"127.0.0.1:{a},127.0.0.1:{b}", timeout_s=3.0)
    assert str(info.value) == (
        f"cannot reach Kafka at 127.0.0.1:{a},127.0.0.1:{b} "
        f"(127.0.0.1:{a}: Connection refused; 127.0.0.1:{b}: Connection refused)"
    )


@pytest.mark.kafka
async def test_a_real_broker_passes(kafka_bootstrap: str) -> None:
    await check_kafka(kafka_bootstrap, timeout_s=10.0)
