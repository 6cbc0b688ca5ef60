"""Settings, names and keep_alive parsing: pure functions."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.settings import SettingsError, load_settings, normalise_ollama_host
from bridge.wire import durations, names


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("", "http://127.0.0.1:11434"),
        ("example.com", "http://example.com:11434"),
        ("example.com:8000", "http://example.com:8000"),
        ("http://example.com:8000/", "http://example.com:8000"),
        ("https://example.com", "https://example.com:443"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        (":11435", "http://127.0.0.1:11435"),
        ("[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_ollama_host_forms(raw: str, url: str) -> None:
    assert normalise_ollama_host(raw) == url


def test_defaults_and_daemon_list() -> None:
    s = load_settings({})
    assert (s.host, s.port, s.max_body_bytes, s.keep_alive_policy) == (
        "127.0.0.1",
        8080,
        16 * 1024 * 1024,
        "bridge",
    )
    (d,) = s.daemon_specs()
    assert (d.url, d.parallel) == ("http://127.0.0.1:11434", 1)
    s = load_settings({"OLLAMA_HOST": "gpu-box:11500"})
    assert s.daemon_specs()[0].url == "http://gpu-box:11500"
    s = load_settings(
        {"ALB_DAEMONS": "g0=http://a:1?parallel=4&max_loaded=2, http://b:2", "ALB_PARALLEL": "2"}
    )
    g0, b = s.daemon_specs()
    assert (g0.name, g0.url, g0.parallel, g0.max_loaded) == ("g0", "http://a:1", 4, 2)
    assert (b.name, b.url, b.parallel) == ("b:2", "http://b:2", 2)
    assert s.high_water_depth == 204


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ALB_PORT": "eighty"}, "ALB_PORT"),
        ({"ALB_HIGH_WATER": "1.5"}, "ALB_HIGH_WATER"),
        ({"ALB_KEEP_ALIVE_POLICY": "sometimes"}, "ALB_KEEP_ALIVE_POLICY"),
        ({"ALB_DAEMONS": "a=http://x:1,a=http://y:2"}, "ALB_DAEMONS"),
        ({"ALB_DAEMONS": "a=http://x:1?parallel=0"}, "ALB_DAEMONS"),
        ({"ALB_KEEP_ALIVE_MIN": "10", "ALB_KEEP_ALIVE_MAX": "5"}, "ALB_KEEP_ALIVE_MIN"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(env)


def test_settings_are_frozen() -> None:
    s = load_settings({})
    with pytest.raises(Exception, match="frozen"):
        s.port = 1  # type: ignore[misc]


def test_names_like_ollama() -> None:
    assert names.key("LLaMA3") == names.key("llama3:latest") == "llama3:latest"
    assert names.key("registry.ollama.ai/library/llama3") == "llama3:latest"
    assert names.display("me/model:7b") == "me/model:7b"
    assert names.is_cloud("gpt-oss:120b-cloud")
    assert names.is_cloud("kimi:cloud")
    assert not names.is_cloud("cloudy:latest")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (1.5, 1.5),
        (-1, math.inf),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("-1m", math.inf),
        ("0", 0.0),
    ],
)
def test_keep_alive_like_go(value: object, seconds: float) -> None:
    assert durations.parse(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", 'time: missing unit in duration "-1"'),
        ("300", 'time: missing unit in duration "300"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        (True, "Unsupported type: 'bool'"),
    ],
)
def test_keep_alive_errors_like_go(value: object, message: str) -> None:
    with pytest.raises(durations.KeepAliveError) as exc:
        durations.parse(value)
    assert str(exc.value) == message


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "bridge.example.com"])
def test_an_open_bridge_off_loopback_refuses_to_start_naming_the_setting(host: str) -> None:
    with pytest.raises(SettingsError, match="ALB_AUTH") as info:
        load_settings({"ALB_HOST": host})
    assert "ALB_ALLOW_OPEN" in str(info.value)
    assert load_settings({"ALB_HOST": host, "ALB_AUTH": "keys"}).auth == "keys"
    assert load_settings({"ALB_HOST": host, "ALB_ALLOW_OPEN": "true"}).allow_open


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_no_keys(host: str) -> None:
    assert load_settings({"ALB_HOST": host}).auth == "none"


def test_alb_serve_on_every_address_without_keys_exits_with_the_reason() -> None:
    alb = str(Path(sys.executable).parent / "alb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALB_")}
    done = subprocess.run(
        [alb, "serve", "--host", "0.0.0.0", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "ALB_AUTH" in done.stderr
    assert "Traceback" not in done.stderr
