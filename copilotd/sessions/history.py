"""Reading a session's persisted events: pages, the newest few, and a live stream;
the API's listings (``Listings``); and where the API's pure reads of the store
run (``StoreReads``).

Every read is bounded by bytes (``PAGE_BYTES``) as well as by count, so a
session of large events never produces an oversized response. Reads give
the visible history (``store.visible``): events cut by a rewind only with
``include_rewound``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, TypeVar

from copilotd import events as ev
from copilotd.errors import InvalidArgumentError, MessageIdTakenError, Reason, SessionNotFoundError
from copilotd.events import SessionEvent, SessionMetadata
from copilotd.limits import DEFAULT_EVENT_PAGE_SIZE, DEFAULT_PAGE_SIZE, PAGE_BYTES, byte_batches
from copilotd.sessions.fanout import FanOut, Subscription
from copilotd.sessions.store_errors import store_errors
from copilotd.sessions.validation import check_session_id, page_size
from copilotd.store import Store
from copilotd.store.visible import read_visible

T = TypeVar("T")

STREAM_BATCH_EVENTS = 256
# A stream's batches are smaller than a page: a client that stops reading
# leaves its last batch pinned in the daemon (queued for the connection) for
# as long as the stream lasts, so this bounds what each such stream costs.
STREAM_BATCH_BYTES = 256 * 1024


class StoreReads:
    """Runs reads of the store for the API: off the event loop when the store is a
    database server, so that a slow query holds up that call alone (the local
    stores' reads are memory lookups, cheaper than a hop to a thread)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def __call__(self, read: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``read(*args, **kwargs)``: a call that only reads the store (no session state)."""
        if self.store.shared:
            return await asyncio.to_thread(read, *args, **kwargs)
        return read(*args, **kwargs)


class History:
    """The events of sessions as the store holds them, and as they are committed."""

    def __init__(self, store: Store, fanout: FanOut[SessionEvent]) -> None:
        self._store = store
        self._fanout = fanout
        # Shared with the service: its pure reads run the same way.
        self.reads = StoreReads(store)

    def page(
        self,
        session_id: str,
        cursor: int,
        limit: int,
        newest_first: bool,
        *,
        include_rewound: bool = False,
    ) -> tuple[list[SessionEvent], int]:
        """Up to ``limit`` events from ``cursor`` on, and the cursor of the next page (0: none)."""
        with store_errors(session_id):
            if newest_first:
                events = read_visible(
                    self._store,
                    session_id,
                    before=cursor or None,
                    limit=limit,
                    newest_first=True,
                    max_bytes=PAGE_BYTES,
                    include_rewound=include_rewound,
                )
            else:
                events = read_visible(
                    self._store,
                    session_id,
                    after=cursor,
                    limit=limit,
                    max_bytes=PAGE_BYTES,
                    include_rewound=include_rewound,
                )
        if not events:
            return events, 0
        # A page cut short by its byte budget holds fewer events than asked
        # for: whether more follow is told by the sequence numbers, not the count.
        last = events[-1].sequence
        more = last > 1 if newest_first else not self._read_to_end(session_id, last)
        return events, last if more else 0

    def logged_message(self, session_id: str, message_id: str) -> tuple[SessionEvent, bool] | None:
        """The user message ``message_id`` as the durable log holds it (not queued), or None.

        The in-memory recent ids miss a message sent before a restart, before
        the session's state was evicted, or more than ``RECENT_MESSAGE_IDS``
        messages ago; the store's index of event ids does not. An id that
        names an event of another type is refused: event ids stay unique.
        """
        if not message_id:
            return None
        with store_errors(session_id):
            event = self._store.find_event(session_id, message_id)
        if event is None:
            return None
        if event.type != ev.USER_MESSAGE:
            raise MessageIdTakenError(session_id, message_id, event.type)
        return event, False

    def tail(self, session_id: str, count: int) -> list[SessionEvent]:
        """The newest ``count`` events that fit in a page, oldest first."""
        with store_errors(session_id):
            tail = read_visible(
                self._store,
                session_id,
                limit=count,
                newest_first=True,
                max_bytes=PAGE_BYTES,  # the newest that fit; the rest by ListEvents
            )
        tail.reverse()
        return tail

    def _read_to_end(self, session_id: str, sequence: int) -> bool:
        """Whether ``sequence`` is the session's last persisted event (or past it)."""
        record = self._store.get_session(session_id)
        if record is None:
            raise SessionNotFoundError(session_id)
        return sequence >= record.metadata.last_sequence

    async def follow(
        self,
        session_id: str,
        after_sequence: int,
        on_subscribed: Callable[[Subscription[SessionEvent]], None] | None = None,
        *,
        include_rewound: bool = False,
    ) -> AsyncGenerator[tuple[Sequence[SessionEvent], bool]]:
        """Persisted events after the cursor, then live ones, as ``(batch, live)`` pairs.

        The subscription is registered before the store is read, so nothing
        committed in between is missed; events already delivered from the
        store are skipped when they come in live. Every batch is bounded by
        bytes (``byte_batches``), however far behind the subscriber is.
        """
        subscription = self._fanout.subscribe(session_id)
        try:
            if on_subscribed is not None:
                on_subscribed(subscription)
            cursor = after_sequence
            while True:
                with store_errors(session_id):
                    page = await self.reads(
                        read_visible,
                        self._store,
                        session_id,
                        after=cursor,
                        limit=STREAM_BATCH_EVENTS,
                        max_bytes=STREAM_BATCH_BYTES,
                        include_rewound=include_rewound,
                    )
                    if page:
                        cursor = page[-1].sequence
                    caught_up = not page or await self.reads(self._read_to_end, session_id, cursor)
                subscription.hold(sum(event.ByteSize() for event in page))
                yield page, caught_up
                if caught_up:
                    break
            while True:
                batch = await subscription.next_batch()
                # A delta older than the catch-up is stale; an assignment is
                # this subscriber's own and never is.
                fresh = [
                    e
                    for e in batch
                    if e.type in ev.ASSIGNMENT_TYPES
                    or (e.sequence >= cursor if e.ephemeral else e.sequence > cursor)
                ]
                for event in fresh:
                    if not event.ephemeral:
                        cursor = event.sequence
                for part in byte_batches(fresh, STREAM_BATCH_BYTES):
                    yield part, True
        finally:
            self._fanout.unsubscribe(subscription)


class Listings:
    """``ListSessions`` and ``ListEvents``: pages of sessions and of a session's events,
    sized by the caller within the daemon's limits (pure reads: ``StoreReads`` runs them)."""

    def __init__(self, store: Store, history: History) -> None:
        self._store = store
        self._history = history

    def list_sessions(
        self, requested_page_size: int, page_token: str
    ) -> tuple[list[SessionMetadata], str]:
        try:
            records, next_token = self._store.list_sessions(
                limit=page_size(requested_page_size, DEFAULT_PAGE_SIZE),
                page_token=page_token,
                max_bytes=PAGE_BYTES,  # system messages may be as large as prompts
            )
        except ValueError:
            raise InvalidArgumentError(
                "page_token is not one this daemon issued; pass the next_page_token of the "
                "previous response, or an empty token for the first page",
                Reason.ERROR_REASON_INVALID_PAGE_TOKEN,
            ) from None
        return [record.metadata for record in records], next_token

    def list_events(
        self,
        session_id: str,
        cursor: int,
        requested_page_size: int,
        newest_first: bool,
        include_rewound: bool = False,
    ) -> tuple[list[SessionEvent], int]:
        check_session_id(session_id)
        limit = page_size(requested_page_size, DEFAULT_EVENT_PAGE_SIZE)
        return self._history.page(
            session_id, cursor, limit, newest_first, include_rewound=include_rewound
        )
