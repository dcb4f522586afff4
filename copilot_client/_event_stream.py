"""A session's live event stream: attached, re-attached after outages, dispatched in order.

A ``CopilotSession`` has one; its event handlers and the waiters of
``send_and_wait`` are fed from it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import NamedTuple

from ._errors import (
    CopilotError,
    DaemonUnavailableError,
    ResourceExhaustedError,
    SessionNotFoundError,
    SubscriberTooSlowError,
)
from ._history import stream_stopped_event
from ._session_events import SessionEvent, SessionEventType
from .proto.v1 import copilot_pb2
from .service import ServiceClient

logger = logging.getLogger("copilot_client")

EventHandler = Callable[[SessionEvent], Awaitable[None] | None]

# Re-attaching the event stream after UNAVAILABLE: the first delay, doubled
# up to the last. There is no last attempt: handlers must not go quiet after
# an outage, so the stream re-attaches for as long as the session is open.
STREAM_RETRY_DELAY = 0.2
STREAM_RETRY_MAX_DELAY = 5.0


class Reattached:
    """Queued to waiters when the stream re-attached (ephemeral events may be lost)."""


class Delivery(NamedTuple):
    """An event for a waiter; ``replayed`` when it came from a catch-up."""

    event: SessionEvent
    replayed: bool


REATTACHED = Reattached()
WaiterItem = Delivery | BaseException | Reattached


def seen(queue: asyncio.Queue[WaiterItem], message_id: str) -> bool:
    """Whether an event of message ``message_id`` is among those queued (left in place)."""
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    for item in items:
        queue.put_nowait(item)
    return any(
        isinstance(item, Delivery)
        and (item.event.id == message_id or item.event.data.user_message_id == message_id)
        for item in items
    )


# Most events of a turn are deltas; converting them for no one was a
# quarter of send_and_wait's own CPU time.
_DELTA = SessionEventType.ASSISTANT_MESSAGE_DELTA.value


class EventStream:
    """The stream of one session's events, for its handlers and waiters."""

    def __init__(
        self,
        transport: ServiceClient,
        session_id: str,
        last_sequence: int,
        check_usable: Callable[[], None],
        tool_client: Callable[[], copilot_pb2.ToolClient] | None = None,
    ) -> None:
        self._transport = transport
        # What this session handle attaches with, asked again on every
        # re-attach (the calls it runs change).
        self._tool_client = tool_client
        self._session_id = session_id
        # Says why a stream that would not go live cannot (destroyed, deleted).
        self._check_usable = check_usable
        self.last_sequence = last_sequence
        self.handlers: dict[object, EventHandler] = {}
        self.waiters: set[asyncio.Queue[WaiterItem]] = set()
        self._task: asyncio.Task[None] | None = None
        self._live = asyncio.Event()
        # Counts the times the stream became live; a send cut by an outage
        # waits for the next one to see what the daemon recorded.
        self.attachments = 0
        self._attached_again = asyncio.Condition()
        self._error: CopilotError | None = None
        self.deleted: SessionNotFoundError | None = None
        # attach() was called: keep the stream even without handlers.
        self.attached = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._error = None
            self._live.clear()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"copilot-session-{self._session_id}"
            )

    async def ensure_live(self) -> None:
        """Starts the event stream if needed and waits until it is live."""
        if self._live.is_set() and self._task is not None and not self._task.done():
            return  # the usual case from the second turn on: nothing to wait for
        self.start()
        task = self._task
        assert task is not None
        live = asyncio.ensure_future(self._live.wait())
        try:
            await asyncio.wait({live, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            live.cancel()
        if not self._live.is_set():
            self._check_usable()
            raise self._error or CopilotError("the event stream ended")

    async def wait_attached_after(self, attachments: int) -> None:
        """Waits until the stream has become live more than ``attachments`` times."""
        async with self._attached_again:
            await self._attached_again.wait_for(lambda: self.attachments > attachments)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                stream = self._transport.stream_events(
                    self._session_id,
                    self.last_sequence,
                    self._tool_client() if self._tool_client is not None else None,
                )
                async with aclosing(stream):
                    async for response in stream:
                        failures = 0
                        replayed = not self._live.is_set()
                        for proto in response.events:
                            if proto.type == _DELTA and not self.handlers:
                                continue  # only handlers see deltas; waiters skip them
                            await self._dispatch(SessionEvent.from_proto(proto), replayed)
                        if response.live and not self._live.is_set():
                            self._live.set()
                            async with self._attached_again:
                                self.attachments += 1
                                self._attached_again.notify_all()
                error: CopilotError = DaemonUnavailableError(
                    "the event stream ended", socket_path=self._transport.where
                )
            except SessionNotFoundError as exc:
                self.deleted = exc
                self.fail_waiters(exc)
                return
            except (DaemonUnavailableError, ResourceExhaustedError) as exc:
                if not isinstance(exc, DaemonUnavailableError | SubscriberTooSlowError):
                    await self._stop_with(exc)
                    return
                error = exc
            except CopilotError as exc:
                if not self._transport.is_open:
                    return  # the client was stopped
                await self._stop_with(exc)
                return
            except Exception as exc:
                logger.exception("event stream of session %s failed", self._session_id)
                await self._stop_with(CopilotError(f"the event stream failed: {exc!r}"))
                return
            if not self._transport.is_open:
                return  # the client was stopped
            failures += 1
            logger.debug("re-attaching to %s after %s", self._session_id, error)
            self._live.clear()
            for queue in self.waiters:
                queue.put_nowait(REATTACHED)
            if failures > 1 or isinstance(error, DaemonUnavailableError):
                delay = STREAM_RETRY_DELAY * 2 ** min(failures - 1, 16)
                await asyncio.sleep(min(delay, STREAM_RETRY_MAX_DELAY))

    async def _stop_with(self, error: CopilotError) -> None:
        """Ends the stream for an error re-attaching cannot cure, and says so to
        everyone: waiters get the error, handlers a last, ephemeral
        ``session.error`` event (``error_type`` ``"event_stream"``) rather
        than silence."""
        logger.warning("event stream of session %s stopped: %s", self._session_id, error)
        self._error = error
        self.fail_waiters(error)
        await self._dispatch(stream_stopped_event(self.last_sequence, error), replayed=False)

    def fail_waiters(self, error: BaseException) -> None:
        for queue in self.waiters:
            queue.put_nowait(error)

    async def _dispatch(self, event: SessionEvent, replayed: bool) -> None:
        if not event.ephemeral:
            if event.sequence <= self.last_sequence:
                return  # already seen before a re-attach
            self.last_sequence = event.sequence
        for queue in self.waiters:
            queue.put_nowait(Delivery(event, replayed))
        for handler in list(self.handlers.values()):
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception(
                    "event handler %r failed on %s (session %s)",
                    handler,
                    event.type_name,
                    self._session_id,
                )

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._live.clear()
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
