"""A replay put together: the simulation (``replay.des``) with the controller the
policy asks for — Ollama's own scheduler (``replay.ollama_fleet``) or the bridge's
(``replay.bridge_fleet``). The event loop knows neither; this module knows both."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ollamasim.config import FleetConfig
from replay.bridge_fleet import BridgeFleet
from replay.des import BridgeKnobs, Clients, Controller, Simulation
from replay.ollama_fleet import OllamaFleet
from replay.policies import PolicySpec
from replay.report import ReplayReport
from replay.workload import Request


def controller_for(policy: PolicySpec) -> Callable[[Simulation], Controller]:
    return OllamaFleet if policy.kind == "ollama" else BridgeFleet


def new_simulation(
    fleet: FleetConfig,
    policy: PolicySpec,
    requests: Sequence[Request],
    *,
    knobs: BridgeKnobs | None = None,
    tick_s: float = 10.0,
    observer: Callable[[Simulation], None] | None = None,
    clients: Clients | None = None,
    slo_s: float = 5.0,
) -> Simulation:
    """One replay of ``requests`` on ``fleet`` under ``policy``, ready to ``run``."""
    return Simulation(
        fleet,
        policy,
        requests,
        controller_for(policy),
        knobs=knobs,
        tick_s=tick_s,
        observer=observer,
        clients=clients,
        slo_s=slo_s,
    )


def simulate(
    fleet: FleetConfig,
    policy: PolicySpec,
    requests: Sequence[Request],
    *,
    knobs: BridgeKnobs | None = None,
    tick_s: float = 10.0,
    clients: Clients | None = None,
    slo_s: float = 5.0,
) -> ReplayReport:
    """Replay ``requests`` on ``fleet`` under ``policy`` and report the metrics."""
    sim = new_simulation(
        fleet, policy, requests, knobs=knobs, tick_s=tick_s, clients=clients, slo_s=slo_s
    )
    return sim.run()
