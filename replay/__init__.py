"""Replay evaluation: a deterministic discrete-event simulation of a fleet that replays
a trace through Ollama's scheduler or the bridge's real policies, with or without the
predictor core, and reports cold starts, latency, prefetch quality and idle memory.

Modules: :mod:`~replay.des` (the event loop), :mod:`~replay.bridge_fleet`
and :mod:`~replay.ollama_fleet` (the two controllers), :mod:`~replay.policies`
(the five policies), :mod:`~replay.report` (metrics), :mod:`~replay.sweep`,
:mod:`~replay.send` and :mod:`~replay.cli` (``alb replay ...``).
"""
