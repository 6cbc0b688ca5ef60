"""KafkaBus choices that need no broker."""

from __future__ import annotations

import pytest

from ingest import bus_kafka


def test_lz4_is_used_when_aiokafka_has_its_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_kafka, "has_lz4", lambda: True)
    assert bus_kafka._compression("lz4") == "lz4"


def test_missing_codec_falls_back_to_gzip_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bus_kafka, "has_lz4", lambda: False)
    assert bus_kafka._compression("lz4") == "gzip"
    assert "aiokafka[lz4]" in caplog.text
    assert bus_kafka._compression("gzip") == "gzip"
