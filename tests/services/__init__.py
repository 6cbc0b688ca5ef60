"""Real services for integration tests: Kafka, Redis (and, when present, real Ollama).

Each service has a plain module that can start and stop it (``kafka_broker``,
``redis_server``, usable from ``scripts/kafka`` and ``scripts/redis``) and a pytest
plugin (``kafka``, ``redis``) with a session fixture. ``_env`` holds the shared policy:
a missing service skips on a laptop and fails the run under ``CI=true``.
"""
