"""Which daemon serves a request: a pure function of a fleet snapshot.

Prefer a daemon that has the model loaded or is already loading it (joining
that load beats starting a second one elsewhere), least outstanding requests
first; otherwise any daemon that has the model in its store, the one with the
fewest outstanding requests and loaded models first. Issue #4 replaces the
cold branch with a memory-aware plan; the signature stays.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.fleet import DaemonView


def place(views: Sequence[DaemonView], key: str) -> tuple[str, bool] | None:
    """``(daemon, warm)`` for model ``key``, or None when no daemon that is up has it."""
    candidates = [v for v in views if v.up and key in v.models]
    if not candidates:
        candidates = [v for v in views if v.up and (key in v.loaded or key in v.loading)]
    if not candidates:
        return None
    warm = [v for v in candidates if key in v.loaded or key in v.loading]
    if warm:
        best = min(warm, key=lambda v: (v.outstanding.get(key, 0), v.name))
        return best.name, key in best.loaded

    def cold_cost(v: DaemonView) -> tuple[int, int, str]:
        return (sum(v.outstanding.values()), len(v.loaded), v.name)

    return min(candidates, key=cold_cost).name, False
