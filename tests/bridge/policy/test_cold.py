"""``bridge.policy.cold``: why a request waits for a load, from the fleet it found."""

from __future__ import annotations

import pytest

from bridge.policy.cold import CONTEXT, COPY, FIRST, GONE, cold_cause
from bridge.policy.numctx import Need
from bridge.policy.placement import DaemonView, RunnerView

GIB = 1024**3
M = "m:latest"


def _runner(ctx: int = 4096, *, loading: bool = False, auto: bool = True) -> RunnerView:
    return RunnerView(M, GIB, ctx, auto, busy=False, pinned=False, idle_s=0.0, reload_s=2.0,
                      loading=loading)  # fmt: skip


def _view(name: str, runner: RunnerView | None = None) -> DaemonView:
    runners = {M: runner} if runner is not None else {}
    return DaemonView(name, True, frozenset({M}), runners, 20 * GIB, 3)


@pytest.mark.parametrize(("known", "cause"), [(False, FIRST), (True, GONE)])
def test_nothing_ready_anywhere_is_a_first_load_or_a_model_gone(known: bool, cause: str) -> None:
    # Nothing of m, or m still loading somewhere: not ready.
    views = [_view("a"), _view("b", _runner(loading=True))]
    assert cold_cause(views, M, Need(100), daemon="b", known=known) == cause


def test_a_ready_runner_too_small_for_the_request_is_context() -> None:
    views = [_view("a", _runner(4096)), _view("b")]
    # A reload on a, or a second runner on b: either way a runner of m was ready.
    assert cold_cause(views, M, Need(8000), daemon="a", known=True) == CONTEXT
    assert cold_cause(views, M, Need(8000), daemon="b", known=True) == CONTEXT
    # An /v1 request that cannot go natively fits only a runner at the daemon's default.
    views = [_view("a", _runner(8192, auto=False))]
    assert cold_cause(views, M, Need(100, auto=True), daemon="a", known=True) == CONTEXT


def test_waiting_for_a_copy_while_a_ready_runner_elsewhere_fits_is_by_choice() -> None:
    views = [_view("a", _runner(4096)), _view("b", _runner(4096, loading=True))]
    assert cold_cause(views, M, Need(100), daemon="b", known=True) == COPY
    # A ready runner elsewhere that cannot serve it does not make the wait a choice.
    assert cold_cause(views, M, Need(8000), daemon="b", known=True) == CONTEXT
