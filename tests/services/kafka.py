"""pytest plugin: the session fixture ``kafka_bootstrap`` ("host:port").

Where the broker comes from, first match wins:

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (a broker you run yourself, e.g. ``scripts/kafka``);
2. testcontainers' ``KafkaContainer`` when a Docker engine answers a ping;
3. a local Apache Kafka 4.0.2 JVM broker from Maven Central jars (``kafka_broker``).

``ALB_TEST_KAFKA=docker`` forces 2, ``=jvm`` forces 3. One broker serves the whole run.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from tests.services import kafka_broker
from tests.services._env import provide, unavailable
from tests.services._report import note

# Confluent Platform 7.9 ships Apache Kafka 3.9; the JVM path runs 4.0.2 exactly.
# testcontainers' Kafka module drives Confluent's images only; Confluent Platform 8.0
# ships Apache Kafka 4.0, the line the JVM route runs. Never run here (no Docker engine).
_IMAGE = os.environ.get("ALB_KAFKA_IMAGE", "confluentinc/cp-kafka:8.0.0")


def _unix_socket_answers(host: str) -> bool:
    """For a ``unix://`` Docker host (the default), whether its socket takes a connection.
    Asked before the SDK is: docker 7's ``UnixHTTPConnection.connect`` leaves its socket
    open when the connect fails (a ResourceWarning at garbage collection)."""
    if not host.startswith("unix://"):
        return True  # tcp/ssh: the SDK's own connects close what fails
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(host.removeprefix("unix://"))
    except OSError:
        return False
    return True


def _docker_answers() -> bool:
    """A quick ping of the Docker engine; False on any trouble (no daemon, no SDK, ...)."""
    if not _unix_socket_answers(os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")):
        return False
    try:
        import docker  # type: ignore[import-untyped]  # noqa: PLC0415

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _from_docker(config: pytest.Config) -> Iterator[str]:
    from testcontainers.community.kafka import KafkaContainer  # noqa: PLC0415

    started = time.monotonic()
    try:
        container = KafkaContainer(_IMAGE).with_kraft()  # its constructor already talks to Docker
        container.start()
    except Exception as exc:
        problem = (
            f"Kafka: testcontainers could not start {_IMAGE} ({exc!r}); try ALB_TEST_KAFKA=jvm"
        )
    else:
        problem = ""
    if problem:  # outside the except block, so the report is not a chained traceback
        unavailable(problem)
    try:
        bootstrap = str(container.get_bootstrap_server())
        took = time.monotonic() - started
        note(config, f"kafka: container {_IMAGE} at {bootstrap}, up in {took:.1f}s")
        yield bootstrap
    finally:
        container.stop()


def _from_jvm(config: pytest.Config) -> Iterator[str]:
    broker = provide(kafka_broker.start, "Kafka")
    fetched = f"; jar download took {broker.fetch_s:.1f}s" if broker.fetch_s else ", jars cached"
    note(
        config,
        f"kafka: local JVM broker {kafka_broker.KAFKA_VERSION} at {broker.bootstrap}, "
        f"up in {broker.startup_s:.1f}s (format + start + first metadata{fetched})",
    )
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    """``host:port`` of a real Kafka broker for this test run."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        note(request.config, f"kafka: KAFKA_BOOTSTRAP_SERVERS={given}")
        yield given
        return
    choice = os.environ.get("ALB_TEST_KAFKA", "").lower()
    if choice == "docker" or (choice != "jvm" and _docker_answers()):
        yield from _from_docker(request.config)
    else:
        yield from _from_jvm(request.config)
