"""Reads a stopped daemon's store from disk and checks that it is whole.

Used after crashes, fuzzing and faults: the store opens (schema and
structure are checked by ``LmdbStore.open``), every listed session has a
log numbered 1..n with each event pointing at the one before, its record
agrees with its log, and every turn that started has ended, except at most
the last one, which the record then names as open (the daemon closes it at
its next start).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from copilotd.events import (
    ASSISTANT_TURN_END,
    ASSISTANT_TURN_START,
    SESSION_SNAPSHOT_REWIND,
    USER_MESSAGE,
)
from copilotd.store import LmdbStore, SessionEvent

PAGE = 1000


@dataclass
class SessionState:
    """What a check found in one session."""

    events: list[SessionEvent]
    user_message_ids: list[str]
    pending_ids: list[str]
    open_turn_id: str
    turn_ends: dict[str, SessionEvent] = field(default_factory=dict)


@dataclass
class StoreReport:
    sessions: dict[str, SessionState]

    @property
    def event_count(self) -> int:
        return sum(len(s.events) for s in self.sessions.values())

    @property
    def open_turns(self) -> dict[str, str]:
        return {sid: s.open_turn_id for sid, s in self.sessions.items() if s.open_turn_id}


def read_all_events(store: LmdbStore, session_id: str) -> list[SessionEvent]:
    events: list[SessionEvent] = []
    while True:
        after = events[-1].sequence if events else 0
        page = store.read_events(session_id, after=after, limit=PAGE)
        events.extend(page)
        if len(page) < PAGE:
            return events


def check_session(store: LmdbStore, session_id: str) -> SessionState:
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
    return SessionState(
        events=events,
        user_message_ids=[e.id for e in events if e.type == USER_MESSAGE],
        pending_ids=[p.message_id for p in record.pending],
        open_turn_id=record.open_turn_id,
        turn_ends=ends,
    )


def check_store(data_dir: Path) -> StoreReport:
    """Open the store of a daemon that is not running and check all of it."""
    store = LmdbStore.open(data_dir / "store")
    try:
        listed: list[str] = []
        token = ""
        while True:
            page, token = store.list_sessions(limit=PAGE, page_token=token)
            listed.extend(r.metadata.session_id for r in page)
            if not token:
                break
        assert len(listed) == len(set(listed)) == store.session_count(), "listing is off"
        return StoreReport({sid: check_session(store, sid) for sid in listed})
    finally:
        store.close()
