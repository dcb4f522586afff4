"""Lifecycle events of all sessions, whichever process caused them."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing

from ._errors import CopilotError, DaemonUnavailableError
from ._types import LifecycleEvent
from .service import ServiceClient
from .wire import LIFECYCLE_TYPES

__all__ = ["LifecycleHandler", "LifecycleWatch"]

logger = logging.getLogger("copilot_client")

LifecycleHandler = Callable[[LifecycleEvent], Awaitable[None] | None]
RETRIES = 5
RETRY_DELAY = 0.2


class LifecycleWatch:
    """One WatchLifecycle stream per client, shared by its handlers; re-attaches on restarts."""

    def __init__(self, transport: ServiceClient) -> None:
        self._transport = transport
        self._handlers: dict[object, tuple[str | None, LifecycleHandler]] = {}
        self._task: asyncio.Task[None] | None = None
        self.live = asyncio.Event()

    def subscribe(
        self, first: str | LifecycleHandler, handler: LifecycleHandler | None
    ) -> Callable[[], None]:
        """``CopilotClient.on_lifecycle``: ``first`` is an event type, or the handler of all."""
        if isinstance(first, str):
            if handler is None:
                raise TypeError("on_lifecycle(event_type, handler) needs a handler")
            return self.add(first, handler)
        return self.add(None, first)

    def add(self, event_type: str | None, handler: LifecycleHandler) -> Callable[[], None]:
        if event_type is not None and event_type not in LIFECYCLE_TYPES:
            raise ValueError(
                f"unknown lifecycle event type {event_type!r}; "
                f"expected one of {sorted(LIFECYCLE_TYPES)}"
            )
        token = object()
        self._handlers[token] = (event_type, handler)
        if self._task is None or self._task.done():
            self.live.clear()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="copilot-lifecycle"
            )

        def unsubscribe() -> None:
            self._handlers.pop(token, None)

        return unsubscribe

    async def close(self) -> None:
        self._handlers.clear()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        failures = 0
        while self._handlers:
            try:
                stream = self._transport.watch_lifecycle()
                async with aclosing(stream):
                    async for event in stream:
                        failures = 0
                        if event is None:
                            self.live.set()
                            continue
                        await self._dispatch(LifecycleEvent.from_proto(event))
            except DaemonUnavailableError as error:
                self.live.clear()
                failures += 1
                if failures > RETRIES or not self._transport.is_open:
                    logger.warning("lifecycle watch stopped: %s", error)
                    return
                await asyncio.sleep(RETRY_DELAY * 2 ** (failures - 1))
            except CopilotError as error:
                logger.warning("lifecycle watch stopped: %s", error)
                return

    async def _dispatch(self, event: LifecycleEvent) -> None:
        for wanted, handler in list(self._handlers.values()):
            if wanted is not None and wanted != event.type:
                continue
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("lifecycle handler %r failed on %s", handler, event.type)
