"""common.tasks: stop is cancel-and-wait; a crash is logged once, by name; a caller
cancelled while it waits stays cancelled."""

from __future__ import annotations

import asyncio
import logging

import pytest

from common.tasks import BackgroundTask, cancel_and_wait


async def test_stop_cancels_and_waits_for_the_task() -> None:
    cleaned = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    t = BackgroundTask("work")
    t.start(work())
    await asyncio.sleep(0)
    assert t.running
    await t.stop()
    assert cleaned.is_set()
    assert not t.running
    await t.stop()  # stopping twice is harmless
    t.start(work())
    second = work()
    with pytest.raises(RuntimeError):
        t.start(second)
    await t.stop()


async def test_a_crash_is_logged_once_with_the_tasks_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom() -> None:
        raise ValueError("boom")

    t = BackgroundTask("the-boomer")
    with caplog.at_level(logging.ERROR, logger="alb.tasks"):
        t.start(boom())
        assert t.task is not None
        await asyncio.wait([t.task])
        await asyncio.sleep(0)
    crashed = [r for r in caplog.records if "the-boomer" in r.getMessage()]
    assert len(crashed) == 1
    assert crashed[0].exc_info is not None


async def test_a_caller_cancelled_while_waiting_stays_cancelled() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # slow to finish
            raise

    inner = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    outer = asyncio.get_running_loop().create_task(cancel_and_wait(inner))
    await asyncio.sleep(0.05)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    await cancel_and_wait(inner)
    assert inner.cancelled()
