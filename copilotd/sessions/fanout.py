"""Live fan-out of events to subscribers, keyed by session (or by topic).

Publishing never blocks: each subscriber has a bounded buffer, and one that
falls behind is cut off with ``SubscriberTooSlowError`` so that it re-attaches
from its cursor and reads what it missed from the store, while the turn and
the other subscribers go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Generic, TypeVar

from copilotd.errors import ServiceError, SubscriberTooSlowError

DEFAULT_BUFFER_EVENTS = 10_000

log = logging.getLogger(__name__)

Item = TypeVar("Item")


class Subscription(Generic[Item]):
    """One subscriber's buffer of live items."""

    def __init__(self, key: str, capacity: int) -> None:
        self.key = key
        self._capacity = capacity
        self._buffer: list[Item] = []
        self._ready = asyncio.Event()
        self._error: ServiceError | None = None

    def _push(self, items: Sequence[Item]) -> bool:
        """Buffer ``items``; False when the buffer overflowed and the subscriber is cut off."""
        if self._error is not None:
            return True
        if len(self._buffer) + len(items) > self._capacity:
            self._buffer.clear()  # it will re-read from its cursor
            self._end(
                SubscriberTooSlowError(
                    f"this subscriber fell more than {self._capacity} events behind on "
                    f"{self.key!r}; re-attach from the last sequence number you received"
                )
            )
            return False
        self._buffer.extend(items)
        self._ready.set()
        return True

    def _end(self, error: ServiceError) -> None:
        """End the subscription: what is buffered is still delivered, then ``error``."""
        self._error = error
        self._ready.set()

    async def next_batch(self) -> list[Item]:
        """Everything buffered so far (at least one item); raises the error that ended it."""
        while not self._buffer:
            if self._error is not None:
                raise self._error
            await self._ready.wait()
            self._ready.clear()
        batch, self._buffer = self._buffer, []
        return batch


class FanOut(Generic[Item]):
    """Subscribers per key (a session id, or a topic)."""

    def __init__(self, *, buffer_events: int = DEFAULT_BUFFER_EVENTS) -> None:
        self._buffer_events = buffer_events
        self._subscribers: defaultdict[str, set[Subscription[Item]]] = defaultdict(set)

    def subscribe(self, key: str) -> Subscription[Item]:
        subscription: Subscription[Item] = Subscription(key, self._buffer_events)
        self._subscribers[key].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription[Item]) -> None:
        subscribers = self._subscribers.get(subscription.key)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscribers[subscription.key]

    def subscriber_count(self, key: str) -> int:
        return len(self._subscribers.get(key, ()))

    def has_audience(self, key: str) -> bool:
        """Whether anything would see items published under ``key`` (so live-only
        items need not be built otherwise)."""
        return bool(self._subscribers.get(key))

    def publish(self, key: str, items: Sequence[Item]) -> None:
        for subscription in list(self._subscribers.get(key, ())):
            if not subscription._push(items):
                log.info(
                    "a subscriber of %s fell more than %d events behind and was cut off; "
                    "it re-attaches from its cursor",
                    key,
                    self._buffer_events,
                )
                self.unsubscribe(subscription)

    def end(self, key: str, error: ServiceError, last: Sequence[Item] = ()) -> None:
        """Deliver ``last`` to every subscriber of ``key``, then end them with ``error``."""
        for subscription in self._subscribers.pop(key, set()):
            subscription._push(last)
            subscription._end(error)

    def end_all(self, error: ServiceError) -> None:
        for key in list(self._subscribers):
            self.end(key, error)
