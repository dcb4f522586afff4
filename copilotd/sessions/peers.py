"""Keeping a daemon's view of a session current: its own commits and other daemons'.

Several daemons may share one store. Each delivers a session's persisted
events to its own live subscribers in sequence order, with no gap and no
duplicate, whoever wrote them: before publishing its own commit it reads
from the store whatever other daemons committed since the last event it
delivered (``catch_up``), and a notification from the store (or, should
notifications be missed, the periodic tick) makes it do the same.
``SessionState.last_sequence`` is that last delivered event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from copilot_client.wire import LIFECYCLE_CREATED, LIFECYCLE_DELETED, LIFECYCLE_UPDATED
from copilotd import events as ev
from copilotd.events import SessionEvent
from copilotd.sessions.context_window import changes_context
from copilotd.sessions.fanout import FanOut
from copilotd.sessions.history import STREAM_BATCH_BYTES, STREAM_BATCH_EVENTS
from copilotd.sessions.idle_contexts import IdleContexts
from copilotd.sessions.lifecycle import LifecycleFeed
from copilotd.sessions.state import SessionState, TurnOutcome
from copilotd.store import SessionNotFound, Store, StoreChange

log = logging.getLogger(__name__)


class Delivery:
    """Advances sessions' states and publishes their events, in sequence order."""

    def __init__(
        self, store: Store, fanout: FanOut[SessionEvent], idle_contexts: IdleContexts
    ) -> None:
        self._store = store
        self._fanout = fanout
        self._idle_contexts = idle_contexts

    def followed(self, session_id: str) -> bool:
        """Whether a subscriber here follows the session's events."""
        return self._fanout.has_audience(session_id)

    def deliver(self, session_id: str, state: SessionState, events: Sequence[SessionEvent]) -> None:
        """Events that follow ``state.last_sequence`` directly: remember and publish them."""
        if not events:
            return
        state.last_sequence = events[-1].sequence
        state.last_event_id = events[-1].id
        if any(event.type == ev.SESSION_SNAPSHOT_REWIND for event in events):
            # The cut messages leave the model's context: reloaded by the next turn.
            self._idle_contexts.take(session_id)
            state.context = None
        elif state.context is not None and any(map(changes_context, events)):
            self._idle_contexts.take(session_id)  # in use; counted again once idle
            state.context.follow(events)
        state.remember_messages(events)
        self._fanout.publish(session_id, events)

    def catch_up(self, session_id: str, state: SessionState, through: int) -> None:
        """Deliver what other daemons committed up to sequence ``through``.

        Turns of other daemons that end here resolve this daemon's callers
        waiting for them. With nobody here to deliver to, the state skips
        ahead instead, dropping the model context (reloaded by the next turn).
        """
        try:
            if through <= state.last_sequence:
                return
            if not (self._fanout.has_audience(session_id) or state.turn_waiters):
                last = self._store.read_events(session_id, after=through - 1, limit=1)
                state.last_sequence = through
                state.last_event_id = last[0].id if last else ""
                state.context = None
                self._idle_contexts.take(session_id)
                return
            while state.last_sequence < through:
                page = self._store.read_events(
                    session_id,
                    after=state.last_sequence,
                    before=through + 1,
                    limit=STREAM_BATCH_EVENTS,
                    max_bytes=STREAM_BATCH_BYTES,
                )
                if not page:
                    return
                self.deliver(session_id, state, page)
                _resolve_ended_turns(state, page)
        except SessionNotFound:
            return  # deleted meanwhile: its deletion ends the streams


def _resolve_ended_turns(state: SessionState, page: Sequence[SessionEvent]) -> None:
    """Resolve the waiters of the turns whose end is in ``page`` (run by another daemon)."""
    start = 0
    for position, event in enumerate(page):
        if event.type != ev.ASSISTANT_TURN_END:
            continue
        message_id = event.assistant_turn_end.user_message_id
        if message_id in state.turn_waiters:
            state.resolve_waiter(
                message_id, TurnOutcome.from_closing_commit(page[start : position + 1])
            )
        start = position + 1


class PeerChanges:
    """Acts on what other daemons committed, as the store reports it."""

    def __init__(
        self,
        store: Store,
        states: dict[str, SessionState],
        delivery: Delivery,
        lifecycle: LifecycleFeed,
        forget: Callable[[str], Coroutine[Any, Any, None]],
    ) -> None:
        self._store = store
        self._states = states
        self._delivery = delivery
        self._lifecycle = lifecycle
        self._forget = forget
        self._forgetting: set[asyncio.Task[None]] = set()

    def changed(self, change: StoreChange | None) -> None:
        if change is None:
            self.catch_up_all()
            return
        session_id = change.session_id
        if change.kind == "deleted":
            if session_id in self._states or self._delivery.followed(session_id):
                # As after a deletion here: end its streams, waiters and turn.
                task = asyncio.get_running_loop().create_task(self._forget(session_id))
                self._forgetting.add(task)
                task.add_done_callback(self._forgetting.discard)
            else:
                self._lifecycle.announce(LIFECYCLE_DELETED, session_id, None)
            return
        state = self._states.get(session_id)
        if state is not None and change.kind == "events":
            self._delivery.catch_up(session_id, state, change.last_sequence)
        if self._lifecycle.watched and (record := self._store.get_session(session_id)):
            kind = LIFECYCLE_CREATED if change.kind == "created" else LIFECYCLE_UPDATED
            self._lifecycle.announce(kind, session_id, record.metadata)

    def catch_up_all(self) -> None:
        """Deliver what other daemons committed to the sessions followed here (the
        periodic remedy for notifications lost with a dropped connection)."""
        for session_id, state in list(self._states.items()):
            if not (self._delivery.followed(session_id) or state.turn_waiters):
                continue
            record = self._store.get_session(session_id)
            if record is None:
                self.changed(StoreChange("deleted", session_id, 0))
            else:
                self._delivery.catch_up(session_id, state, record.metadata.last_sequence)
