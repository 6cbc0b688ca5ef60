"""NVML reading: parsing against a stand-in, and the real thing where a GPU exists."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from bridge.scheduling.gpu import read_gpus


class _FakeNvmlError(Exception):
    pass


def _fake_nvml(devices: list[tuple[str, int, int]], fail_init: bool = False) -> SimpleNamespace:
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if fail_init:
            raise _FakeNvmlError("NVML Shared Library Not Found")

    return SimpleNamespace(
        NVMLError=_FakeNvmlError,
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: b"580.1",
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}",
        nvmlDeviceGetName=lambda h: devices[h][0].encode(),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(
            total=devices[h][1], used=devices[h][2], free=devices[h][1] - devices[h][2]
        ),
    )


def test_reads_every_device_and_shuts_nvml_down() -> None:
    nvml = _fake_nvml([("H100", 80 * 2**30, 2**30), ("L4", 24 * 2**30, 0)])
    reading = read_gpus(nvml)  # type: ignore[arg-type]
    assert reading.unavailable is None
    assert reading.driver == "580.1"
    assert [(g.index, g.name, g.uuid) for g in reading.gpus] == [
        (0, "H100", "GPU-0"),
        (1, "L4", "GPU-1"),
    ]
    assert reading.gpus[0].free == 79 * 2**30
    assert reading.total == 104 * 2**30
    assert nvml.calls == ["init", "shutdown"]


def test_missing_driver_is_an_answer_not_an_exception() -> None:
    reading = read_gpus(_fake_nvml([], fail_init=True))  # type: ignore[arg-type]
    assert reading.gpus == ()
    assert reading.unavailable == "NVML: NVML Shared Library Not Found"


def test_real_nvml() -> None:
    """On a GPU host (ALB_REQUIRE_GPU=1) NVML must report at least one device."""
    reading = read_gpus()
    if not reading.gpus:
        if os.environ.get("ALB_REQUIRE_GPU") == "1":
            pytest.fail(f"ALB_REQUIRE_GPU=1 but no GPU could be read: {reading.unavailable}")
        assert reading.unavailable  # no GPU here: the reading must say why
        return
    for gpu in reading.gpus:
        assert gpu.total > 0
        assert gpu.used + gpu.free <= gpu.total
    assert reading.driver
