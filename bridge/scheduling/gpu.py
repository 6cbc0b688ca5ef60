"""GPU memory as NVML reports it, for sizing a co-located daemon's memory budget.

Only the bridge host's own GPUs can be read this way; a remote daemon's capacity
comes from configuration and is refined by ``/api/ps``. NVML being absent (no
driver, no GPU, a container without the device) is an answer, not an error: the
reading is empty and says why, and the caller falls back to configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True, slots=True)
class GpuMemory:
    """One device's memory in bytes, read at one instant."""

    index: int
    uuid: str
    name: str
    total: int
    used: int
    free: int


@dataclass(frozen=True, slots=True)
class GpuReading:
    """Every visible device, or the reason none could be read."""

    gpus: tuple[GpuMemory, ...]
    driver: str | None = None
    unavailable: str | None = None

    @property
    def total(self) -> int:
        return sum(g.total for g in self.gpus)


def _text(value: Any) -> str:
    # Older bindings return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else str(value)


def read_gpus(bindings: ModuleType | None = None) -> GpuReading:
    """Read every device NVML can see. ``bindings`` stands in for pynvml in tests."""
    nvml: Any = bindings
    if nvml is None:
        try:
            import pynvml  # noqa: PLC0415  (the bridge runs without a GPU too)
        except ImportError as exc:
            return GpuReading(gpus=(), unavailable=f"pynvml not installed: {exc}")
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return GpuReading(gpus=(), unavailable=f"NVML: {exc}")
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuMemory(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    total=int(memory.total),
                    used=int(memory.used),
                    free=int(memory.free),
                )
            )
        return GpuReading(gpus=tuple(gpus), driver=driver)
    except nvml.NVMLError as exc:
        return GpuReading(gpus=(), unavailable=f"NVML: {exc}")
    finally:
        nvml.nvmlShutdown()
