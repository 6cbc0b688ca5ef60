"""Event plumbing of the Async-Load Bridge (DESIGN.md "Topics and events").

- ``events`` / ``trace``: the event models and the replay trace line (contracts in
  ``schemas/``), ``hashing``: the prompt hashes they carry.
- ``bus``: the ``EventBus`` seam; ``bus_kafka.KafkaBus`` and ``bus_memory.MemoryBus``.
- ``sender`` + ``spool``: loss-free publishing off the request path.
- ``prompts``: the system-prompt registry (memory, Redis).
- ``topics``, ``replay_io``, ``cli``: topic admin and the replay file tools.
- ``contracts``, ``schema_compat``: reading the schemas and refusing breaking changes.
"""
