"""The predictor's pure core: ``step(state, record)`` and ``tick(state, now)``.

No I/O, no clock, no logging, no randomness: time arrives with the records and the
``tick`` calls, so the Faust agent, the embedded mode inside the bridge and the offline
evaluator all get the same decisions from the same inputs.
"""

from predictor.core.machine import (
    PredictorState,
    new_state,
    reuse_probability,
    state_from_dict,
    state_to_dict,
    step,
    tick,
)
from predictor.core.outputs import (
    KeepAliveHint,
    Output,
    Prefetch,
    ReuseHint,
    WarmCache,
    output_to_dict,
)

__all__ = [
    "KeepAliveHint",
    "Output",
    "PredictorState",
    "Prefetch",
    "ReuseHint",
    "WarmCache",
    "new_state",
    "output_to_dict",
    "reuse_probability",
    "state_from_dict",
    "state_to_dict",
    "step",
    "tick",
]
