"""The simulated-fleet fallback of ``make run`` (``alb serve --sim-fallback``).

When no daemon was configured (neither ``ALB_DAEMONS`` nor ``OLLAMA_HOST``) and nothing
answers at the default Ollama address, a simulated fleet (``ollamasim``) is started in
this process, the bridge is pointed at it — each daemon with its parallel slots, its
memory and its loaded-model limit, as its fleet file gives them — and the banner says
so plainly. This lives in the composition root: the bridge never imports the simulator.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import httpx

from bridge.http.server import run
from bridge.settings import Settings
from ollamasim.config import FleetConfig
from ollamasim.serving import DaemonServer
from ollamasim.testing import free_ports

_PROBE_TIMEOUT_S = 1.0
_EXAMPLE_FLEET = Path("examples/fleet.yaml")
#: Used when examples/fleet.yaml is not around (an installed package).
BUILTIN_FLEET: dict[str, Any] = {
    "time_scale": 0.1,
    "models": [
        {"name": "llama3.2:3b", "size": "2.0GB", "capabilities": ["completion", "tools"]},
        {"name": "nomic-embed-text", "size": "274MB", "capabilities": ["embedding"]},
    ],
    "daemons": [{"name": "sim0", "memory": "24GiB", "load_fixed_s": 1.5}],
}


async def ollama_answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=_PROBE_TIMEOUT_S, trust_env=False) as client:
            resp = await client.get(url + "/api/version")
            return resp.status_code == 200
    except httpx.HTTPError:
        return False


def daemons_of(servers: list[DaemonServer]) -> str:
    """``ALB_DAEMONS`` for the simulated daemons: slots, memory and the loaded-model
    limit as the fleet file gives them (so the bridge plans with the daemons' memory)."""
    return ",".join(
        f"{s.name}={s.base_url}?parallel={s.config.num_parallel}"
        f"&memory={int(s.config.memory)}&max_loaded={s.config.max_runners}"
        for s in servers
    )


async def start_fleet(settings: Settings) -> tuple[list[DaemonServer], str]:
    """The simulated daemons, started, and where their fleet came from."""
    if settings.sim_config:
        source, config = settings.sim_config, FleetConfig.load(settings.sim_config)
    elif _EXAMPLE_FLEET.is_file():  # noqa: ASYNC240 - start-up, once
        source, config = str(_EXAMPLE_FLEET), FleetConfig.load(_EXAMPLE_FLEET)
    else:
        source, config = "a built-in small fleet", FleetConfig.model_validate(BUILTIN_FLEET)
    config = free_ports(config)
    servers = [DaemonServer(config, d, "127.0.0.1") for d in config.daemons]
    for s in servers:
        await s.start()
    return servers, source


async def serve(settings: Settings, *, explicit_upstream: bool) -> None:
    """``bridge.http.server.run``, in front of a simulated fleet when the fallback applies."""
    if not settings.sim_fallback or explicit_upstream or await ollama_answers(settings.ollama_host):
        await run(settings)
        return
    servers, source = await start_fleet(settings)
    try:
        note = (
            f"SIMULATED FLEET: nothing answered at {settings.ollama_host} and OLLAMA_HOST "
            f"is unset, so the bridge is serving an in-process simulated Ollama fleet "
            f"(ollamasim, from {source}). Answers are synthetic. Start Ollama or set "
            "OLLAMA_HOST / ALB_DAEMONS to use real models."
        )
        await run(settings.model_copy(update={"daemons": daemons_of(servers)}), note=note)
    finally:
        for s in servers:
            with contextlib.suppress(Exception):  # shutting down: the daemons may be gone
                await s.stop()
