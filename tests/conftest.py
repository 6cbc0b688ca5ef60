"""Test-wide configuration: the real-service fixtures are plugins under tests/services.

Markers (declared in pyproject.toml) say what a test needs: ``kafka`` (fixture
``kafka_bootstrap``), ``redis`` (``redis_url``), ``ollama_real``, ``slow``. A service
that cannot start skips its tests on a laptop and fails them under ``CI=true``.
"""

from __future__ import annotations

from pathlib import Path

pytest_plugins = [
    "tests.services._report",
    "tests.services.kafka",
    "tests.services.redis",
]
if (Path(__file__).parent / "services" / "real_ollama.py").exists():
    pytest_plugins.append("tests.services.real_ollama")
