"""Replay evaluation: a deterministic discrete-event simulation of a fleet that replays
a trace through Ollama's scheduler or the bridge's real policies, with or without the
predictor core, and reports cold starts, latency, prefetch quality and idle memory.

Modules: :mod:`~predictor.replay.des` (the event loop), :mod:`~predictor.replay.bridge`
and :mod:`~predictor.replay.ollama` (the two controllers), :mod:`~predictor.replay.policies`
(the five policies), :mod:`~predictor.replay.report` (metrics), :mod:`~predictor.replay.sweep`,
:mod:`~predictor.replay.send` and :mod:`~predictor.replay.cli` (``alb replay ...``).
"""
