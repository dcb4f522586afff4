"""Fork and rewind: a session branched at a point of its history, or taken back to one.

Both name a point by sequence, and both refuse a point the conversation
could not go on from: inside a turn (between its user message and its
end), above all between a tool call and its result or a permission request
and its decision, which no provider would accept cut apart. The store does
the rest in one commit each (``StoreWriter.fork_session``; a rewind is one
``session.snapshot_rewind`` event), so a crash leaves a fork made or not, a
session rewound or not.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from copilotd import events as ev
from copilotd.errors import (
    PointInsideToolCallError,
    PointInsideTurnError,
    SequenceOutOfRangeError,
    SequenceRewoundError,
    TurnBusyError,
    TurnRunningError,
)
from copilotd.events import SessionEvent, SessionMetadata
from copilotd.sessions.scheduler import TurnScheduler
from copilotd.sessions.state import SessionState, TurnHost
from copilotd.sessions.store_errors import store_errors
from copilotd.sessions.turns import TurnEngine
from copilotd.sessions.validation import check_label, check_session_id
from copilotd.store import SessionRecord, Store
from copilotd.store.committer import GroupCommitter
from copilotd.store.records import is_rewound
from copilotd.store.visible import read_visible

# Events read per page while looking back from a point for its turn's start:
# few at first (the point is usually a turn's end), more while the turn goes on.
_FIRST_SCAN_PAGE = 8
_MAX_SCAN_PAGE = 512
# Events a turn may not leave open: (opening type, closing type).
_TOOL_PAIRS = {
    ev.TOOL_EXECUTION_START: ev.TOOL_EXECUTION_COMPLETE,
    ev.PERMISSION_REQUESTED: ev.PERMISSION_COMPLETED,
}


def _call_id(event: SessionEvent) -> str:
    """The tool call an event of a call/result or request/decision pair belongs to."""
    if event.type == ev.TOOL_EXECUTION_START:
        return event.tool_execution_start.tool_call_id
    if event.type == ev.TOOL_EXECUTION_COMPLETE:
        return event.tool_execution_complete.tool_call_id
    if event.type == ev.PERMISSION_REQUESTED:
        return event.permission_requested.tool_call_id
    return event.permission_completed.tool_call_id


def check_point(store: Store, record: SessionRecord, point: int, action: str) -> SessionEvent:
    """The event at ``point`` if the conversation can go on from it; raises otherwise.

    Looks back from ``point`` to the end of the turn before it (cost: one
    turn's events): a user message or a turn start on the way means the point
    is inside a turn; a tool call or permission request whose answer comes
    after the point means it is inside that call.
    """
    metadata = record.metadata
    session_id, last = metadata.session_id, metadata.last_sequence
    if not 1 <= point <= last:
        raise SequenceOutOfRangeError(
            f"cannot {action} session {session_id!r} at sequence {point}: its events are "
            f"numbered 1 to {last}"
        )
    if is_rewound(record, point):
        raise SequenceRewoundError(session_id, point)
    answered: set[str] = set()
    before = point + 1
    at: SessionEvent | None = None
    size = _FIRST_SCAN_PAGE
    while True:
        page = read_visible(
            store, session_id, before=before, limit=size, newest_first=True, record=record
        )
        size = min(size * 2, _MAX_SCAN_PAGE)
        for event in page:
            at = at or event
            if event.type == ev.ASSISTANT_TURN_END:
                return at
            if event.type in (ev.TOOL_EXECUTION_COMPLETE, ev.PERMISSION_COMPLETED):
                answered.add(f"{event.type}:{_call_id(event)}")
            elif event.type in _TOOL_PAIRS:
                if f"{_TOOL_PAIRS[event.type]}:{_call_id(event)}" not in answered:
                    raise PointInsideToolCallError(
                        f"cannot {action} session {session_id!r} at sequence {point}: it is "
                        f"between the tool call {_call_id(event)!r} (its {event.type} is "
                        f"sequence {event.sequence}) and its answer; pick a point before "
                        "the turn's user message or at the turn's assistant.turn_end"
                    )
            elif event.type in (ev.USER_MESSAGE, ev.ASSISTANT_TURN_START):
                raise PointInsideTurnError(
                    f"cannot {action} session {session_id!r} at sequence {point}: it is inside "
                    f"a turn (its {event.type} is sequence {event.sequence}, and its "
                    f"assistant.turn_end comes after); pick sequence {event.sequence - 1} or "
                    "earlier, or the turn's assistant.turn_end"
                )
        if not page or page[-1].sequence <= 1:
            assert at is not None  # sequence 1 (session.start) is never rewound
            return at
        before = page[-1].sequence


class Branching:
    """``SessionService.fork_session`` and ``rewind_session``."""

    def __init__(
        self,
        host: TurnHost,
        committer: GroupCommitter,
        turns: TurnEngine,
        scheduler: TurnScheduler,
        record_of: Callable[[str], SessionRecord],
        state_of: Callable[[SessionRecord], SessionState],
        created: Callable[[SessionRecord, list[SessionEvent]], None],
    ) -> None:
        self._host = host
        self._committer = committer
        self._turns = turns
        self._scheduler = scheduler
        self._record_of = record_of
        self._state_of = state_of
        self._created = created

    async def fork_session(
        self, source_id: str, new_session_id: str, up_to_sequence: int | None
    ) -> SessionMetadata:
        """A new session whose history is the source's up to the point (its last event
        by default), then a ``session.fork`` event; nothing is copied."""
        record = self._record_of(source_id)
        session_id = new_session_id or str(uuid.uuid4())
        check_session_id(session_id)
        point = record.metadata.last_sequence if up_to_sequence is None else up_to_sequence
        at = check_point(self._host.store, record, point, "fork")
        marker = ev.make_event(
            ev.SESSION_FORK, parent_session_id=source_id, fork_sequence=point, parent_event_id=at.id
        )
        with store_errors(session_id):
            fork, stored = await self._committer.submit(
                lambda writer: writer.fork_session(source_id, session_id, point, [marker])
            )
        await self._host.providers.share_session_provider(source_id, session_id)
        self._created(fork, stored)
        return fork.metadata

    async def rewind_session(
        self,
        session_id: str,
        to_sequence: int,
        *,
        abort_turn: bool = False,
        reason: str = "",
        expected_last_sequence: int | None = None,
    ) -> tuple[SessionMetadata, SessionEvent]:
        """Record one ``session.snapshot_rewind`` that cuts the events after ``to_sequence``.

        A running turn refuses it, unless ``abort_turn``: the turn is aborted
        (its end recorded) and the queue held back until the rewind is
        committed, so the next queued message runs on the rewound history.
        """
        check_label(reason, "reason")
        record = self._record_of(session_id)
        state = self._state_of(record)
        held = False
        if state.turn is not None or record.metadata.turn_running:
            if not abort_turn or state.turn is None:  # another daemon's turn: not ours to stop
                raise TurnRunningError(session_id, "rewound")
            held, state.queue_held = True, True
            await self._turns.cancel(state.turn, reason=reason or "aborted to rewind the session")
            record = self._record_of(session_id)
        try:
            at = check_point(self._host.store, record, to_sequence, "rewind")
            if to_sequence == record.metadata.last_sequence:
                raise SequenceOutOfRangeError(
                    f"session {session_id!r} ends at sequence {to_sequence}: a rewind to it "
                    "would cut nothing; name an earlier event"
                )
            rewind = ev.make_event(
                ev.SESSION_SNAPSHOT_REWIND, to_sequence=to_sequence, up_to_event_id=at.id
            )
            rewind.session_snapshot_rewind.reason = reason
            try:
                record, stored = await self._host.append(
                    session_id, [rewind], expected_last_sequence=expected_last_sequence
                )
            except TurnBusyError:  # a turn started since the check: the store's own refusal
                raise TurnRunningError(session_id, "rewound") from None
        finally:
            if held:
                state.queue_held = False
                if state.turn is None and state.pending and not self._host.shutting_down:
                    self._scheduler.start_next(session_id, state)
        return record.metadata, stored[0]
