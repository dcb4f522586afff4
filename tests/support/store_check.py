"""Reads a stopped daemon's store from disk and checks that it is whole.

Used after crashes, fuzzing and faults: the store opens (schema and
structure are checked by ``LmdbStore.open``), every listed session has a
log numbered 1..n with each event pointing at the one before, its record
agrees with its log, and every turn that started has ended, except at most
the last one, which the record then names as open (the daemon closes it at
its next start, or goes on waiting for its tool calls).

Tool calls pair up (``check_tool_calls``): every ``tool.execution_start``
has exactly one ``tool.execution_complete`` after it, in the same turn and
before that turn's end, and every ``permission.requested`` exactly one
``permission.completed`` before its call's result; only the calls of the
open turn may still wait, and those are the record's ``pending_tool_calls``.
A result or decision with no call before it fails, and so does a second one.

``check_store`` reads an LMDB data directory; ``check_opened_store`` any
open store, e.g. the PostgreSQL one several daemons share.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from copilotd.events import (
    ASSISTANT_TURN_END,
    ASSISTANT_TURN_START,
    PERMISSION_COMPLETED,
    PERMISSION_REQUESTED,
    SESSION_SNAPSHOT_REWIND,
    TOOL_EXECUTION_COMPLETE,
    TOOL_EXECUTION_START,
    USER_MESSAGE,
)
from copilotd.store import LmdbStore, SessionEvent, SessionRecord, Store

PAGE = 1000


@dataclass
class SessionState:
    """What a check found in one session."""

    events: list[SessionEvent]
    user_message_ids: list[str]
    pending_ids: list[str]
    open_turn_id: str
    turn_ends: dict[str, SessionEvent] = field(default_factory=dict)
    # Ids of the calls the model made, in order, and of those still waiting.
    tool_calls: list[str] = field(default_factory=list)
    open_tool_calls: list[str] = field(default_factory=list)
    awaiting_permission: list[str] = field(default_factory=list)


@dataclass
class StoreReport:
    sessions: dict[str, SessionState]

    @property
    def event_count(self) -> int:
        return sum(len(s.events) for s in self.sessions.values())

    @property
    def open_turns(self) -> dict[str, str]:
        return {sid: s.open_turn_id for sid, s in self.sessions.items() if s.open_turn_id}

    @property
    def tool_call_count(self) -> int:
        return sum(len(s.tool_calls) for s in self.sessions.values())

    @property
    def waiting_turns(self) -> dict[str, str]:
        """The open turns that wait for tool calls (a restart keeps them open)."""
        return {
            sid: s.open_turn_id
            for sid, s in self.sessions.items()
            if s.open_turn_id and s.open_tool_calls
        }


def read_all_events(store: Store, session_id: str) -> list[SessionEvent]:
    events: list[SessionEvent] = []
    while True:
        after = events[-1].sequence if events else 0
        page = store.read_events(session_id, after=after, limit=PAGE)
        events.extend(page)
        if len(page) < PAGE:
            return events


def _turn_of(event: SessionEvent) -> str:
    data = getattr(event, event.WhichOneof("data") or "")
    return str(getattr(data, "turn_id", ""))


def _call_of(event: SessionEvent) -> str:
    data = getattr(event, event.WhichOneof("data") or "")
    return str(data.tool_call_id)


def check_tool_calls(
    where: str, events: list[SessionEvent], record: SessionRecord
) -> tuple[list[str], list[str], list[str]]:
    """Every call has exactly one result (see the module's docstring); returns the
    ids of the calls, of those still waiting, and of those waiting for a decision."""
    started: dict[str, SessionEvent] = {}
    completed: dict[str, SessionEvent] = {}
    asked: dict[str, SessionEvent] = {}
    decided: set[str] = set()
    ended_turns: set[str] = set()
    for event in events:
        if event.type == ASSISTANT_TURN_END:
            ended_turns.add(event.assistant_turn_end.turn_id)
            continue
        if event.type not in (
            TOOL_EXECUTION_START,
            TOOL_EXECUTION_COMPLETE,
            PERMISSION_REQUESTED,
            PERMISSION_COMPLETED,
        ):
            continue
        call_id, turn_id = _call_of(event), _turn_of(event)
        what = f"{where}: {event.type} of call {call_id} (sequence {event.sequence})"
        if event.type == TOOL_EXECUTION_START:
            assert call_id not in started, f"{what}: the call id was started twice"
            assert turn_id not in ended_turns, f"{what}: after its turn ended"
            started[call_id] = event
            continue
        call = started.get(call_id)
        assert call is not None, f"{what}: no call before it"
        assert turn_id == _turn_of(call), f"{what}: in another turn than its call"
        assert turn_id not in ended_turns, f"{what}: after its turn ended"
        if event.type == TOOL_EXECUTION_COMPLETE:
            assert call_id not in completed, f"{what}: a second result"
            assert call_id not in asked or call_id in decided, f"{what}: before its decision"
            completed[call_id] = event
        elif event.type == PERMISSION_REQUESTED:
            assert call_id not in asked, f"{what}: a second request"
            assert call_id not in completed, f"{what}: after its result"
            asked[call_id] = event
        else:
            assert call_id in asked, f"{what}: no request before it"
            assert call_id not in decided, f"{what}: a second decision"
            decided.add(call_id)
    waiting = [call_id for call_id in started if call_id not in completed]
    for call_id in waiting:
        turn_id = _turn_of(started[call_id])
        assert turn_id == record.open_turn_id and turn_id not in ended_turns, (
            f"{where}: call {call_id} of turn {turn_id} has no result, and its turn "
            + ("ended" if turn_id in ended_turns else "is not the open one")
        )
    pending = {call.tool_call_id: call for call in record.metadata.pending_tool_calls}
    assert list(pending) == waiting, (
        f"{where}: the record's pending calls {list(pending)} are not the waiting {waiting}"
    )
    awaiting = [call_id for call_id in waiting if call_id in asked and call_id not in decided]
    for call_id in waiting:
        assert pending[call_id].awaiting_permission == (call_id in awaiting), (
            f"{where}: call {call_id}: the record says awaiting_permission="
            f"{pending[call_id].awaiting_permission}, the log {call_id in awaiting}"
        )
    return list(started), waiting, awaiting


def check_session(store: Store, session_id: str) -> SessionState:
    record = store.get_session(session_id)
    assert record is not None, f"{session_id}: listed but has no record"
    events = read_all_events(store, session_id)
    where = f"session {session_id}"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)), f"{where}: gap"
    assert not events or events[0].parent_id == "", f"{where}: first event has a parent"
    for previous, event in itertools.pairwise(events):
        assert event.parent_id == previous.id, f"{where}: broken chain at {event.sequence}"
    assert record.metadata.last_sequence == len(events), f"{where}: record behind its log"
    if events:
        assert record.metadata.last_event_id == events[-1].id, f"{where}: wrong last id"
    assert not any(e.ephemeral for e in events), f"{where}: an ephemeral event was stored"
    assert len({e.id for e in events}) == len(events), f"{where}: an event id recorded twice"
    cuts: list[tuple[int, int]] = []
    for rewind in (e.session_snapshot_rewind for e in events if e.type == SESSION_SNAPSHOT_REWIND):
        cuts = [cut for cut in cuts if cut[1] < rewind.to_sequence]
        cuts.append((rewind.first_rewound_sequence, rewind.last_rewound_sequence))
    recorded = [(cut.first, cut.last) for cut in record.rewound]
    assert recorded == cuts, f"{where}: rewound ranges {recorded} disagree with the log's {cuts}"
    logged = {e.id for e in events if e.type == USER_MESSAGE}
    twice = [p.message_id for p in record.pending if p.message_id in logged]
    assert not twice, f"{where}: messages {twice} both queued and in the log"

    starts = [e.assistant_turn_start.turn_id for e in events if e.type == ASSISTANT_TURN_START]
    ends = {e.assistant_turn_end.turn_id: e for e in events if e.type == ASSISTANT_TURN_END}
    unended = [turn for turn in starts if turn not in ends]
    assert len(unended) <= 1, f"{where}: turns {unended} never ended"
    if unended:
        assert starts[-1] == unended[0], f"{where}: an earlier turn was left open"
        assert record.open_turn_id == unended[0], f"{where}: open turn not recorded"
    else:
        assert not record.open_turn_id, f"{where}: record names a turn that has ended"
    calls, waiting, awaiting = check_tool_calls(where, events, record)
    return SessionState(
        events=events,
        user_message_ids=[e.id for e in events if e.type == USER_MESSAGE],
        pending_ids=[p.message_id for p in record.pending],
        open_turn_id=record.open_turn_id,
        turn_ends=ends,
        tool_calls=calls,
        open_tool_calls=waiting,
        awaiting_permission=awaiting,
    )


def check_opened_store(store: Store) -> StoreReport:
    """Check all of an open store that no daemon writes to meanwhile."""
    listed: list[str] = []
    token = ""
    while True:
        page, token = store.list_sessions(limit=PAGE, page_token=token)
        listed.extend(r.metadata.session_id for r in page)
        if not token:
            break
    assert len(listed) == len(set(listed)) == store.session_count(), "listing is off"
    return StoreReport({sid: check_session(store, sid) for sid in listed})


def check_store(data_dir: Path) -> StoreReport:
    """Open the store of a daemon that is not running and check all of it."""
    store = LmdbStore.open(data_dir / "store")
    try:
        return check_opened_store(store)
    finally:
        store.close()
