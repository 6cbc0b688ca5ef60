"""A single-node Apache Kafka broker (KRaft, broker+controller) from Maven Central jars.

Theory of operation: ``fetch`` resolves ``kafka_2.13`` and a log4j2 binding for the
SLF4J 1.7 API with Maven (``scripts/kafka-pom.xml``) into
``$ALB_CACHE_DIR/kafka-<version>/libs`` once (Maven honours ``MAVEN_OPTS`` and
``~/.m2/settings.xml`` for mirrors and proxies); a ``.complete`` marker makes later runs
reuse it. ``start`` picks two free loopback ports, writes ``server.properties`` into a
fresh temp dir, formats storage with ``kafka.tools.StorageTool`` and runs
``java -cp 'libs/*' kafka.Kafka server.properties``. It is ready when a real client
(aiokafka's admin client) gets cluster metadata naming a broker. ``Broker.stop``
sends SIGTERM, waits, falls back to SIGKILL and removes the temp dir.

``python -m tests.services.kafka_broker fetch|start|stop|status`` (``scripts/kafka``)
does the same by hand; ``start`` leaves the broker running and records it in
``<cache>/kafka-<version>/run/broker.json``.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.services import _cli
from tests.services._env import REPO_ROOT, ServiceUnavailable, cache_dir, free_port
from tests.services._process import ServiceProcess, launch

KAFKA_VERSION = "4.0.2"
POM = REPO_ROOT / "scripts" / "kafka-pom.xml"
LOG4J_CONFIG = REPO_ROOT / "scripts" / "kafka-log4j2.properties"
_MAIN_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"
# Fully qualified, so a fresh ~/.m2 needs no plugin-prefix lookup and the version is pinned.
_COPY_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
# Small machine: a little heap, a serial GC and C1 only (faster start, plenty for tests).
_JVM_OPTS = ("-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=2
log.cleaner.dedupe.buffer.size=8388608
"""


def home() -> Path:
    """``<cache>/kafka-<version>``: the jars and the state of a hand-started broker."""
    return cache_dir() / f"kafka-{KAFKA_VERSION}"


def java_bin() -> str:
    """The ``java`` to run: ``$JAVA_HOME/bin/java`` if set, else ``java`` on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise ServiceUnavailable(
            "java not found on PATH (Kafka needs a JDK/JRE 17+: "
            "apt-get install openjdk-17-jre-headless), or set KAFKA_BOOTSTRAP_SERVERS"
        )
    return found


def fetch() -> tuple[Path, float]:
    """Resolve the Kafka jars into the cache once; return (libs dir, seconds spent)."""
    libs = home() / "libs"
    if (libs / ".complete").exists():
        return libs, 0.0
    home().mkdir(parents=True, exist_ok=True)
    with (home() / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be downloading right now
        if (libs / ".complete").exists():
            return libs, 0.0
        started = time.monotonic()
        _download(libs)
        return libs, time.monotonic() - started


def _download(libs: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceUnavailable(
            f"mvn (Maven) not found on PATH: needed once to download the Kafka {KAFKA_VERSION} "
            "jars (apt-get install maven), or set KAFKA_BOOTSTRAP_SERVERS"
        )
    staging = Path(tempfile.mkdtemp(prefix="libs.", dir=home()))
    argv = [
        mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM), _COPY_GOAL,
        f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ServiceUnavailable("the Kafka jar download with Maven timed out (900 s)") from exc
    if done.returncode != 0 or not (staging / _MAIN_JAR).exists():
        shutil.rmtree(staging, ignore_errors=True)
        out = _maven_errors(done.stdout + done.stderr)
        raise ServiceUnavailable(
            f"the Kafka {KAFKA_VERSION} jar download failed (mvn exit {done.returncode}, "
            f"Maven Central reachable?):\n{out}"
        )
    (staging / ".complete").touch()
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAVEN_BOILERPLATE = (
    "re-run maven",
    "to see the full stack",
    "for more information",
    "[help 1] http",
)


def _maven_errors(output: str) -> str:
    """The informative ``[ERROR]`` lines of Maven's output (or its tail if there are none)."""
    lines = [_ANSI.sub("", line).rstrip() for line in output.splitlines()]
    errors = [
        line
        for line in lines
        if line.startswith("[ERROR]")
        and line != "[ERROR]"
        and not any(junk in line.lower() for junk in _MAVEN_BOILERPLATE)
    ]
    return "\n".join(errors[:10] or lines[-20:])


class Broker(ServiceProcess):
    """A running broker: where it listens, where its files are, how to stop it."""

    env_var = "KAFKA_BOOTSTRAP_SERVERS"
    log_name = "broker.log"
    workdir_prefix = "alb-kafka-"
    stop_grace_s = 15.0
    fetch_s = 0.0  # time spent downloading jars before this start, if any

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """The bootstrap address."""
        return self.bootstrap

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> str | None:
        return asyncio.run(_wait_ready(self.bootstrap, proc, deadline))

    def _not_ready(self, problem: str, log_tail: str) -> str:
        return (
            f"Kafka {KAFKA_VERSION} broker did not become ready: {problem}\n"
            f"--- broker log tail ---\n{log_tail}"
        )


def start(*, timeout_s: float = 90.0, detach: bool = False) -> Broker:
    """Format and start a broker on free ports; return once a client sees it ready.

    ``detach`` lets the broker outlive this process (for ``scripts/kafka start``).
    Raises ``ServiceUnavailable`` naming what is missing or the broker's log tail.
    """
    java = java_bin()
    libs, fetch_s = fetch()
    common = [java, *_JVM_OPTS, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", f"{libs}/*"]

    def command(port: int, workdir: Path) -> list[str]:
        config = workdir / "server.properties"
        config.write_text(
            _SERVER_PROPERTIES.format(
                port=port, controller_port=free_port(), data_dir=workdir / "data"
            )
        )
        _format(common, config, workdir)
        return [*common, "kafka.Kafka", str(config)]

    broker = launch(Broker, command, timeout_s=timeout_s, detach=detach)
    broker.fetch_s = fetch_s
    return broker


def _format(common: list[str], config: Path, workdir: Path) -> None:
    cluster_id = _random_cluster_id()
    argv = [*common, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)]
    try:
        done = subprocess.run(
            argv, cwd=workdir, capture_output=True, text=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServiceUnavailable("kafka.tools.StorageTool format timed out (120 s)") from None
    if done.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServiceUnavailable(
            f"kafka.tools.StorageTool format failed (exit {done.returncode}):\n"
            + "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        )


def _random_cluster_id() -> str:
    """A Kafka ``Uuid`` in its base64url form, as ``kafka-storage random-uuid`` prints."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka rejects ids that look like options
            return text


async def _wait_ready(bootstrap: str, proc: subprocess.Popen[bytes], deadline: float) -> str | None:
    """None once cluster metadata names a broker, else why not (exited or timed out)."""
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415 - slow import
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    host, port = bootstrap.rsplit(":", 1)
    last_error = "the port never opened"
    while True:
        if proc.poll() is not None:
            return f"the JVM exited with status {proc.returncode}"
        if time.monotonic() > deadline:
            return f"timed out; last probe error: {last_error}"
        # A cheap TCP check first keeps aiokafka from logging connection errors.
        if _port_open(host, int(port)):
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
            try:
                await admin.start()
                cluster = await admin.describe_cluster()
                if cluster.get("brokers"):
                    return None
                last_error = "metadata names no broker yet"
            except (TimeoutError, KafkaError, OSError) as exc:
                last_error = repr(exc)
            finally:
                await admin.close()
        await asyncio.sleep(0.1)


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# --- scripts/kafka ---------------------------------------------------------------------


def _cli_fetch() -> int:
    libs, spent = fetch()
    note = f"downloaded in {spent:.1f}s" if spent else "already cached"
    print(f"kafka {KAFKA_VERSION} jars in {libs} ({note})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``scripts/kafka``: fetch | start | stop | status."""
    state, label = home() / "run" / "broker.json", f"kafka {KAFKA_VERSION}"
    service = _cli.commands(state, Broker, lambda: start(detach=True), label)
    return _cli.run(argv, "scripts/kafka", {"fetch": _cli_fetch, **service})


if __name__ == "__main__":
    sys.exit(main())
