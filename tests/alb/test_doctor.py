"""``alb doctor`` against a healthy set-up and against each broken one it claims to
detect (issue #17): a daemon down, a mismatched parallel setting, Kafka missing a topic,
Redis down; plus its rules on their own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from alb import doctor
from alb.doctor import DaemonView, Finding, judge_daemon, judge_settings, report
from bridge.settings import load_settings
from ingest import topics
from ollamasim.testing import RunningFleet, serve_in_thread
from tests.bridge._procs import clean_env, free_port
from tests.bridge._support import SIM_CONFIG

ALB = str(Path(sys.executable).parent / "alb")
GIB = 1024**3


@pytest.fixture(scope="module")
def loaded() -> Iterator[RunningFleet]:
    """The simulator (2 parallel slots) with one runner loaded."""
    with serve_in_thread(SIM_CONFIG) as fleet:
        url = fleet.daemons[0].base_url
        r = httpx.post(
            url + "/api/generate", json={"model": "chatty", "prompt": "hi", "stream": False},
            timeout=30,
        )  # fmt: skip
        assert r.status_code == 200
        yield fleet


def _run(env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        [ALB, "doctor"], env=clean_env(**env), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def _daemons(fleet: RunningFleet, parallel: int) -> str:
    return ",".join(f"{d.name}={d.base_url}?parallel={parallel}" for d in fleet.daemons)


@pytest.mark.redis
@pytest.mark.kafka
async def test_a_healthy_setup_has_no_problem(
    loaded: RunningFleet, redis_url: str, kafka_bootstrap: str
) -> None:
    await topics.ensure_topics(kafka_bootstrap, topics.TOPICS)
    code, out = _run(
        {
            "ALB_DAEMONS": _daemons(loaded, 2),
            "ALB_REDIS_URL": redis_url,
            "ALB_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        }
    )
    assert code == 0, out
    assert "0 problem(s)" in out
    assert "parallel 2 matches the bridge" in out
    assert "reachable, Ollama" in out
    assert f"all {len(topics.TOPICS)} topics present" in out


def test_a_mismatched_parallel_setting_is_found(loaded: RunningFleet) -> None:
    code, out = _run({"ALB_DAEMONS": _daemons(loaded, 1)})
    assert code == 1, out
    assert "runners sized for 2 parallel slot(s), the bridge assumes 1" in out
    assert "ALB_PARALLEL=2" in out


def test_a_daemon_down_is_found(loaded: RunningFleet) -> None:
    dead = f"gone=http://127.0.0.1:{free_port()}"
    code, out = _run({"ALB_DAEMONS": _daemons(loaded, 2) + "," + dead})
    assert code == 1, out
    assert "daemon gone" in out
    assert "unreachable" in out
    assert "FAIL" in out


def test_redis_down_is_found(loaded: RunningFleet) -> None:
    code, out = _run(
        {"ALB_DAEMONS": _daemons(loaded, 2), "ALB_REDIS_URL": f"redis://127.0.0.1:{free_port()}"}
    )
    assert code == 1, out
    assert "Redis" in out
    assert "unreachable" in out


@pytest.mark.kafka
async def test_kafka_missing_a_topic_is_found(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await topics.ensure_topics(kafka_bootstrap, topics.TOPICS)
    extra = topics.TopicSpec("alb.doctor-missing.v1", partitions=1, retention_ms=3_600_000)
    monkeypatch.setattr(topics, "TOPICS", (*topics.TOPICS, extra))
    error, seen = await doctor._kafka(kafka_bootstrap)
    assert error is None
    findings = doctor.judge_kafka(kafka_bootstrap, error, seen)
    (missing,) = [f for f in findings if f.level == "fail"]
    assert "alb.doctor-missing.v1: missing" in missing.what
    assert "alb topics create" in missing.fix


def test_kafka_down_is_found() -> None:
    findings = doctor.judge_kafka("127.0.0.1:1", "connection refused", [])
    assert [f.level for f in findings] == ["fail"]


# --- the rules on their own --------------------------------------------------------------


def _view(parallel: int, runners: tuple[tuple[str, int, int, int, int], ...]) -> DaemonView:
    spec = load_settings({"ALB_DAEMONS": f"a=http://h:1?parallel={parallel}"}).daemon_specs()[0]
    return DaemonView(spec, version="0.17.4", skew_s=0.0, runners=runners)


def test_parallel_is_read_from_a_runners_size() -> None:
    kv, ctx, file = 131072, 4096, GIB
    runner = ("m", file + kv * ctx * 4, ctx, file, kv)  # sized for 4 slots
    assert [f.level for f in judge_daemon(_view(4, (runner,)))] == ["ok", "ok"]
    bad = judge_daemon(_view(2, (runner,)))
    assert bad[-1].level == "fail"
    assert "sized for 4" in bad[-1].what
    assert "nothing loaded" in judge_daemon(_view(2, ()))[-1].what


def test_a_skewed_clock_is_a_warning() -> None:
    view = DaemonView(_view(1, ()).spec, version="x", skew_s=42.0)
    assert any(f.level == "warn" and "clock +42 s" in f.what for f in judge_daemon(view))


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"ALB_HEADROOM": "0"}, "no margin"),
        ({"ALB_REQUEST_TIMEOUT": "60", "ALB_LOAD_TIMEOUT": "600"}, "gives up first"),
        ({"ALB_QUEUE_CAPACITY": "2000"}, "OLLAMA_MAX_QUEUE"),
        ({"ALB_HOST": "0.0.0.0", "ALB_ALLOW_OPEN": "true"}, "without keys"),
    ],
)
def test_settings_rules(env: dict[str, Any], words: str) -> None:
    findings = judge_settings(load_settings(env))
    assert any(f.level == "warn" and words in f.what for f in findings), findings


def test_the_report_counts_and_exits_one_on_a_failure() -> None:
    text, code = report([Finding("ok", "a"), Finding("fail", "b", "fix b")])
    assert code == 1
    assert "FAIL  b  -> fix b" in text
    assert text.endswith("1 problem(s), 0 warning(s)")
    assert report([Finding("warn", "w")])[1] == 0
