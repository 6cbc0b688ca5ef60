"""Fleets for replays: the fleet file of ``alb sim``, and a generator for the benchmark's.

:func:`make_fleet` builds the fleets used in BENCHMARKS.md ("Policies on replayed
traces"): ``daemons`` identical daemons (24 GB = 22.4 GiB, so Ollama's default context is
4096; 2 parallel slots, 3 loaded models at most, ``keep_alive`` 5m, loads at
1.5 s + 2 GiB/s) and one
model per name with the given file size. Bigger models get a bigger KV cache per token
and slower prefill / generation, roughly as 3B ... 32B Q4 models do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ollamasim.config import FleetConfig

__all__ = ["SIZES_GB", "SYNTH_SIZES_GB", "load_fleet", "make_fleet", "with_daemons", "write_fleet"]

GB = 10**9

#: File sizes (GB) handed out to models in name order (2 ... 15.5 GB: 3B ... 32B at Q4);
#: the largest still fits one 24 GB daemon with an 8k context for 2 slots under the
#: bridge's 10 % headroom (a 40 GB model would not fit a 24 GB daemon at all).
SIZES_GB: tuple[float, ...] = (
    4.7, 8.5, 2.0, 14.0, 5.5, 15.5, 3.3, 9.0, 4.1, 14.5,
    6.5, 12.0, 2.7, 7.2, 15.0, 4.4, 10.5, 3.8, 13.0, 5.0,
)  # fmt: skip

#: The synthetic trace's 12 models (2 ... 9 GB, 61.5 GB in all): with 3 models per
#: daemon at most, 9 of the 12 fit at once.
SYNTH_SIZES_GB: tuple[float, ...] = (4.7, 8.5, 2.0, 7.0, 5.5, 9.0, 3.3, 4.1, 6.5, 2.7, 4.4, 3.8)


def _model(name: str, size_gb: float) -> dict[str, Any]:
    if size_gb <= 6:
        kv, gen, prefill = 131072, 60.0, 2000.0
    elif size_gb <= 12:
        kv, gen, prefill = 196608, 40.0, 1500.0
    elif size_gb <= 15:
        kv, gen, prefill = 262144, 30.0, 1000.0
    else:
        kv, gen, prefill = 262144, 22.0, 800.0
    return {
        "name": name,
        "size": int(size_gb * GB),
        "context_length": 32768,
        "kv_bytes_per_token": kv,
        "gen_tokens_per_s": gen,
        "prefill_tokens_per_s": prefill,
    }


def make_fleet(
    names: Sequence[str],
    sizes_gb: Sequence[float] = SIZES_GB,
    *,
    daemons: int = 3,
    memory: str = "24GB",
    parallel: int = 2,
    max_loaded: int = 3,
    context_length: int = 0,
    keep_alive: str = "5m",
) -> FleetConfig:
    """A fleet of ``daemons`` identical daemons serving every model of ``names``."""
    models = [_model(n, sizes_gb[i % len(sizes_gb)]) for i, n in enumerate(names)]
    data = {
        "time_scale": 1.0,
        "gen_tokens_per_s": 50.0,
        "prefill_tokens_per_s": 1000.0,
        "models": models,
        "daemons": [
            {
                "name": f"gpu{i}",
                "memory": memory,
                "load_bandwidth": "2GiB",
                "load_fixed_s": 1.5,
                "num_parallel": parallel,
                "max_loaded_models": max_loaded,
                "keep_alive": keep_alive,
                "context_length": context_length,
            }
            for i in range(daemons)
        ],
    }
    return FleetConfig.model_validate(data)


def write_fleet(fleet: FleetConfig, path: Path) -> None:
    """Write ``fleet`` as a fleet file ``alb sim --config`` and the replay accept."""
    data = fleet.model_dump(mode="json", exclude_defaults=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def with_daemons(fleet: FleetConfig, n: int) -> FleetConfig:
    """``fleet`` with ``n`` daemons of its first daemon's kind (``gpu0`` ... ``gpuN-1``),
    for a fleet-size sweep."""
    if n < 1:
        raise ValueError("a fleet needs at least one daemon")
    kind = fleet.daemons[0]
    daemons = tuple(
        kind.model_copy(update={"name": f"gpu{i}", "port": kind.port + i if kind.port else 0})
        for i in range(n)
    )
    return fleet.model_copy(update={"daemons": daemons})


def load_fleet(path: Path) -> FleetConfig:
    """Read a fleet file."""
    return FleetConfig.load(path)
