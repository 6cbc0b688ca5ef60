"""Why a request is cold, pure: the cause of a wait for a load, from the fleet as the
request found it. The live bridge counts them (``alb_cold_starts_total{cause}``) and
the replay reports them (``replay.report``), with the same words:

=========  ==========================================================================
``first``  the model's first load (as far as this bridge has seen): nothing of it was
           ready anywhere before
``gone``   the model was ready before and is ready nowhere now: unloaded, evicted, or
           its runner replaced while the request waited
``context`` a runner of the model is ready, but too small for the request (a longer
           prompt or a larger ``num_ctx``; for ``/v1`` requests that cannot be sent
           natively, a runner not at the daemon's default)
``copy``   cold by choice: a ready runner on another daemon would serve it, and the
           request joined a copy being loaded because its expected wait there was
           shorter (``placement.wait_s``)
=========  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.policy.numctx import Need
from bridge.policy.placement import DaemonView

__all__ = ["COLD_CAUSES", "CONTEXT", "COPY", "FIRST", "GONE", "cold_cause"]

FIRST, GONE, CONTEXT, COPY = "first", "gone", "context", "copy"
COLD_CAUSES = (FIRST, GONE, CONTEXT, COPY)


def cold_cause(
    views: Sequence[DaemonView], key: str, need: Need, *, daemon: str, known: bool
) -> str:
    """The cause of a cold request for ``key`` that waits on ``daemon``; ``known``: the
    model has been seen ready before (by whoever keeps that record)."""
    ready = [(v.name, r) for v in views if (r := v.runners.get(key)) is not None and not r.loading]
    if any(name != daemon and need.fits(r.ctx, r.auto) for name, r in ready):
        return COPY
    if ready:
        return CONTEXT
    return GONE if known else FIRST
