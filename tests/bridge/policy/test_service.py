"""A copy's service time (``queueing.smooth_service`` and ``service_estimate``)."""

from __future__ import annotations

import pytest

from bridge.policy.queueing import SERVICE_PRIOR_S, service_estimate, smooth_service


def test_the_first_measurement_is_taken_whole_then_smoothed() -> None:
    first = smooth_service(None, 0.08)
    assert first == 0.08
    assert smooth_service(first, 0.18) == pytest.approx(0.8 * 0.08 + 0.2 * 0.18)


def test_a_copy_s_own_measurement_wins() -> None:
    assert service_estimate(0.3, [2.0, 4.0]) == 0.3


def test_an_unmeasured_copy_takes_the_mean_of_the_measured_others() -> None:
    assert service_estimate(None, [2.0, None, 4.0]) == pytest.approx(3.0)


def test_with_nothing_measured_anywhere_the_prior() -> None:
    assert service_estimate(None, []) == SERVICE_PRIOR_S
    assert service_estimate(None, [None, None]) == SERVICE_PRIOR_S
