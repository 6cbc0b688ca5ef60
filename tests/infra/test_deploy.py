"""The deployment files against real validators (issue #17): the compose files against
the Compose specification's JSON schema (check-jsonschema's vendored copy), the
Dockerfile through hadolint, the compose stack's Prometheus configuration through
promtool; and what the schema cannot say: every service has a health check, volumes are
named, two bridge replicas sit behind the balancer with the daemon's slots made from
the same variables as Ollama's, every variable the files use is in .env.example."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra" / "compose"
BIN = Path(sys.executable).parent
_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return doc


def test_the_compose_files_follow_the_compose_specification() -> None:
    done = _run(
        str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
        str(COMPOSE / "compose.yaml"), str(COMPOSE / "compose.gpu.yaml"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_passes_hadolint() -> None:
    done = _run(str(BIN / "hadolint"), "--failure-threshold", "info", str(ROOT / "Dockerfile"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_stacks_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run `scripts/prometheus install`")
    # Mounted as in compose.yaml: the rules beside the config.
    rules = tmp_path / "rules"
    rules.mkdir()
    for name in ("alerts.yml", "recording.yml"):
        shutil.copy(ROOT / "infra" / "prometheus" / name, rules / name)
    text = (COMPOSE / "prometheus.yml").read_text().replace("/etc/prometheus/rules", str(rules))
    (tmp_path / "prometheus.yml").write_text(text)
    done = _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_service_is_checked_and_keeps_its_data_in_named_volumes() -> None:
    doc = _compose()
    services = doc["services"]
    assert set(services) == {
        "ollama", "kafka", "redis", "bridge-1", "bridge-2", "lb", "predictor",
        "prometheus", "grafana",
    }  # fmt: skip
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith("."):
                assert source in doc["volumes"], f"{name}: {source} is not a named volume"
            else:
                assert (COMPOSE / source).resolve().exists(), f"{name}: {source} is missing"


def test_two_bridges_behind_the_balancer_with_ollamas_slots() -> None:
    services = _compose()["services"]
    for name in ("bridge-1", "bridge-2"):
        env = services[name]["environment"]
        assert env["ALB_REPLICA_ID"] == name
        assert env["ALB_AUTH"] == "keys"
        assert "redis://" in env["ALB_REDIS_URL"]
        daemons = env["ALB_DAEMONS"]
        assert "parallel=${OLLAMA_NUM_PARALLEL:-2}" in daemons
        assert "max_loaded=${OLLAMA_MAX_LOADED_MODELS:-3}" in daemons
    ollama = services["ollama"]["environment"]
    assert ollama["OLLAMA_NUM_PARALLEL"] == "${OLLAMA_NUM_PARALLEL:-2}"
    assert ollama["OLLAMA_MAX_LOADED_MODELS"] == "${OLLAMA_MAX_LOADED_MODELS:-3}"
    conf = (COMPOSE / "nginx.conf").read_text()
    assert "server bridge-1:8080" in conf
    assert "server bridge-2:8080" in conf
    assert "proxy_buffering off" in conf
    # The drain: compose's stop grace outlasts ALB_DRAIN_TIMEOUT's default.
    grace = services["bridge-1"]["stop_grace_period"]
    assert int(grace.removesuffix("s")) > 30


def test_every_variable_is_in_the_env_example() -> None:
    used = set()
    for name in ("compose.yaml", "compose.gpu.yaml"):
        used |= set(_VAR.findall((COMPOSE / name).read_text()))
    example = (COMPOSE / ".env.example").read_text()
    given = {line.split("=", 1)[0] for line in example.splitlines() if "=" in line}
    given = {g for g in given if not g.startswith("#")}
    assert used <= given, sorted(used - given)
