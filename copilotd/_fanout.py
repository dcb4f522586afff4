"""Live fan-out of a session's events to its subscribers.

Publishing never blocks: each subscriber has a bounded buffer, and one that
falls behind is cut off with ``SubscriberTooSlowError`` so that it re-attaches
from its cursor and reads what it missed from the store, while the turn and
the other subscribers go on.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

from copilotd._errors import ServiceError, SubscriberTooSlowError
from copilotd._events import SessionEvent

DEFAULT_BUFFER_EVENTS = 10_000


class Subscription:
    """One subscriber's buffer of live events."""

    def __init__(self, session_id: str, capacity: int) -> None:
        self.session_id = session_id
        self._capacity = capacity
        self._buffer: list[SessionEvent] = []
        self._ready = asyncio.Event()
        self._error: ServiceError | None = None

    def _push(self, events: Sequence[SessionEvent]) -> bool:
        """Buffer ``events``; False when the buffer overflowed and the subscriber is cut off."""
        if self._error is not None:
            return True
        if len(self._buffer) + len(events) > self._capacity:
            self._fail(
                SubscriberTooSlowError(
                    f"this subscriber fell more than {self._capacity} events behind on session "
                    f"{self.session_id!r}; re-attach from the last sequence number you received"
                )
            )
            return False
        self._buffer.extend(events)
        self._ready.set()
        return True

    def _fail(self, error: ServiceError) -> None:
        self._error = error
        self._buffer.clear()
        self._ready.set()

    async def next_batch(self) -> list[SessionEvent]:
        """Everything buffered so far (at least one event); raises the error that ended it."""
        while not self._buffer:
            if self._error is not None:
                raise self._error
            await self._ready.wait()
            self._ready.clear()
        if self._error is not None:
            raise self._error
        batch, self._buffer = self._buffer, []
        return batch


class FanOut:
    """Subscribers per session."""

    def __init__(self, *, buffer_events: int = DEFAULT_BUFFER_EVENTS) -> None:
        self._buffer_events = buffer_events
        self._subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)

    def subscribe(self, session_id: str) -> Subscription:
        subscription = Subscription(session_id, self._buffer_events)
        self._subscribers[session_id].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.session_id)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscribers[subscription.session_id]

    def subscriber_count(self, session_id: str) -> int:
        return len(self._subscribers.get(session_id, ()))

    def publish(self, session_id: str, events: Sequence[SessionEvent]) -> None:
        for subscription in list(self._subscribers.get(session_id, ())):
            if not subscription._push(events):
                self.unsubscribe(subscription)

    def end_session(self, session_id: str, error: ServiceError) -> None:
        """End every subscription of a session with ``error`` (e.g. it was deleted)."""
        for subscription in self._subscribers.pop(session_id, set()):
            subscription._fail(error)

    def end_all(self, error: ServiceError) -> None:
        for session_id in list(self._subscribers):
            self.end_session(session_id, error)
