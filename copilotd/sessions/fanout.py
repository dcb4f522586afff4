"""Live fan-out of events to subscribers, keyed by session (or by topic).

Publishing never blocks, and what subscribers pin is bounded three ways:

* events per subscriber (``buffer_events``) and bytes per subscriber
  (``buffer_bytes``): a subscriber over either is cut off;
* bytes over all subscribers (``total_bytes``): when a publish passes it,
  the subscribers pinning the most are cut off until it holds again;
* subscribers (``max_subscribers``): a new one at the limit cuts off the
  one pinning the most (the oldest when none pins anything).

What a subscriber pins is what it has buffered plus the batch it took last
and has not finished with (a stream waiting for its client to read, the
case a subscriber that never reads ends in). A subscriber cut off gets
``SubscriberTooSlowError``, so that it re-attaches from its cursor and reads
what it missed from the store, while the turn and the others go on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Generic, TypeVar

from google.protobuf.message import Message

from copilotd.errors import ServiceError, SubscriberTooSlowError

DEFAULT_BUFFER_EVENTS = 10_000
DEFAULT_BUFFER_BYTES = 32 << 20
DEFAULT_TOTAL_BYTES = 256 << 20
DEFAULT_MAX_SUBSCRIBERS = 1024

log = logging.getLogger(__name__)

Item = TypeVar("Item", bound=Message)

_order = itertools.count()


class _Ledger:
    """Bytes pinned by all subscribers of a fan-out, kept as they change (publishing
    must not walk every subscriber)."""

    def __init__(self) -> None:
        self.pinned = 0


class Subscription(Generic[Item]):
    """One subscriber's buffer of live items."""

    def __init__(self, key: str, capacity: int, capacity_bytes: int, ledger: _Ledger) -> None:
        self.key = key
        self._capacity = capacity
        self._capacity_bytes = capacity_bytes
        self._ledger = ledger
        self._buffer: list[Item] = []
        self._buffered_bytes = 0
        self._taken_bytes = 0
        self._ready = asyncio.Event()
        self._error: ServiceError | None = None
        self.order = next(_order)

    @property
    def pinned_bytes(self) -> int:
        """Bytes buffered, plus those of the batch taken last (until the next is asked for)."""
        return self._buffered_bytes + self._taken_bytes

    def hold(self, size: int) -> None:
        """Count ``size`` bytes the subscriber holds outside the fan-out (a page of history
        being sent), until its next batch is asked for."""
        if self._error is not None:
            return  # cut off or ended: no longer the fan-out's to count
        self._ledger.pinned += size - self._taken_bytes
        self._taken_bytes = size

    def send(self, items: Sequence[Item]) -> None:
        """Items for this subscriber alone (a tool call assigned to its client); an
        overflow cuts it off as a publish would (its stream then ends)."""
        self._push(items)

    def _push(self, items: Sequence[Item]) -> str | None:
        """Buffer ``items``; when the buffer overflowed, cut the subscriber off and say why."""
        if self._error is not None:
            return None
        size = sum(item.ByteSize() for item in items)
        why = None
        if len(self._buffer) + len(items) > self._capacity:
            why = f"fell more than {self._capacity} events behind"
        # An empty buffer takes any batch: one event may outweigh the bound.
        elif self._buffer and self._buffered_bytes + size > self._capacity_bytes:
            why = f"fell more than {self._capacity_bytes} bytes behind"
        if why is not None:
            self._cut_off(why)
            return why
        self._buffer.extend(items)
        self._buffered_bytes += size
        self._ledger.pinned += size
        self._ready.set()
        return None

    def _cut_off(self, why: str) -> None:
        self._buffer.clear()  # it will re-read from its cursor
        self._release()
        self._end(
            SubscriberTooSlowError(
                f"this subscriber {why} on {self.key!r} and was cut off; re-attach from the "
                "last sequence number you received"
            )
        )

    def _release(self) -> None:
        self._ledger.pinned -= self.pinned_bytes
        self._buffered_bytes = self._taken_bytes = 0

    def _end(self, error: ServiceError) -> None:
        """End the subscription: what is buffered is still delivered, then ``error``."""
        self._error = error
        self._ready.set()

    async def next_batch(self) -> list[Item]:
        """Everything buffered so far (at least one item); raises the error that ended it."""
        self.hold(0)
        while not self._buffer:
            if self._error is not None:
                raise self._error
            await self._ready.wait()
            self._ready.clear()
        batch, self._buffer = self._buffer, []
        self._taken_bytes, self._buffered_bytes = self._buffered_bytes, 0
        return batch


class FanOut(Generic[Item]):
    """Subscribers per key (a session id, or a topic)."""

    def __init__(
        self,
        *,
        buffer_events: int = DEFAULT_BUFFER_EVENTS,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        total_bytes: int = DEFAULT_TOTAL_BYTES,
        max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
    ) -> None:
        self._buffer_events = buffer_events
        self._buffer_bytes = buffer_bytes
        self._total_bytes = total_bytes
        self._max_subscribers = max_subscribers
        self._subscribers: defaultdict[str, set[Subscription[Item]]] = defaultdict(set)
        self._ledger = _Ledger()

    def subscribe(self, key: str) -> Subscription[Item]:
        if self.total_subscribers() >= self._max_subscribers:
            self._cut_off_heaviest(f"there were {self._max_subscribers} subscribers already")
        subscription: Subscription[Item] = Subscription(
            key, self._buffer_events, self._buffer_bytes, self._ledger
        )
        self._subscribers[key].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription[Item]) -> None:
        subscription._release()
        subscribers = self._subscribers.get(subscription.key)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscribers[subscription.key]

    def subscriber_count(self, key: str) -> int:
        return len(self._subscribers.get(key, ()))

    def total_subscribers(self) -> int:
        return sum(len(subscribers) for subscribers in self._subscribers.values())

    def pinned_bytes(self) -> int:
        """Bytes all subscribers pin now (see the module docstring)."""
        return self._ledger.pinned

    def has_audience(self, key: str) -> bool:
        """Whether anything would see items published under ``key`` (so live-only
        items need not be built otherwise)."""
        return bool(self._subscribers.get(key))

    def publish(self, key: str, items: Sequence[Item]) -> None:
        for subscription in list(self._subscribers.get(key, ())):
            why = subscription._push(items)
            if why is not None:
                log.info(
                    "a subscriber of %s %s and was cut off; it re-attaches from its cursor",
                    key,
                    why,
                )
                self.unsubscribe(subscription)
        while self._ledger.pinned > self._total_bytes and self._cut_off_heaviest(
            f"subscribers pinned over {self._total_bytes} bytes"
        ):
            pass

    def _cut_off_heaviest(self, why: str) -> bool:
        """Cut off the subscriber pinning the most; False when there is none."""
        everyone = [s for group in self._subscribers.values() for s in group]
        if not everyone:
            return False
        heaviest = max(everyone, key=lambda s: (s.pinned_bytes, -s.order))
        log.info(
            "%s: the subscriber of %s pinning the most (%d bytes) was cut off; it re-attaches "
            "from its cursor",
            why,
            heaviest.key,
            heaviest.pinned_bytes,
        )
        heaviest._cut_off("pinned the most memory of all subscribers")
        self.unsubscribe(heaviest)
        return True

    def end(self, key: str, error: ServiceError, last: Sequence[Item] = ()) -> None:
        """Deliver ``last`` to every subscriber of ``key``, then end them with ``error``."""
        for subscription in self._subscribers.pop(key, set()):
            subscription._push(last)
            subscription._end(error)

    def end_all(self, error: ServiceError) -> None:
        for key in list(self._subscribers):
            self.end(key, error)
