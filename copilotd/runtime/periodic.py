"""A coroutine run again and again on the event loop, until stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``action`` now and then every ``interval`` seconds.

    A failing action is logged and tried again at the next tick: background
    duties (retention sweeps, watchdog pings) must not stop on one error.
    """

    def __init__(self, name: str, interval: float, action: Callable[[], Awaitable[None]]) -> None:
        self._name = name
        self._interval = interval
        self._action = action
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self._action()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", self._name)
            await asyncio.sleep(self._interval)
