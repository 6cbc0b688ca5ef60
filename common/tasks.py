"""Background tasks owned by an object: one way to start, stop and watch them.

``cancel_and_wait(task)`` cancels a task and waits until it has finished. It swallows
the task's own ``CancelledError``, and only that one: when the caller is itself being
cancelled while it waits, the cancellation goes on up. ``BackgroundTask`` is one
named task its owner starts and stops. A task that ends by an exception is logged
once, with its name, when it ends, and not only when someone awaits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("alb.tasks")


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing) and wait for it to finish."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError  # the caller was cancelled while it waited


class BackgroundTask:
    """One named task: ``start(coro)``, ``running``, ``await stop()``."""

    __slots__ = ("_log", "_task", "name")

    def __init__(self, name: str, logger: logging.Logger | None = None) -> None:
        self.name = name
        self._log = logger or log
        self._task: asyncio.Task[Any] | None = None

    def start(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self.running:
            coro.close()
            raise RuntimeError(f"{self.name} is already running")
        self._task = asyncio.get_running_loop().create_task(coro, name=self.name)
        self._task.add_done_callback(self._ended)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def task(self) -> asyncio.Task[Any] | None:
        return self._task

    async def stop(self) -> None:
        """Cancel the task and wait until it has finished (no-op when it is not running)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error("background task %s crashed", self.name, exc_info=exc)
