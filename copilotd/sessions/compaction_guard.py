"""One compaction of a session at a time across the daemons sharing a store.

Within a daemon, ``Compactor`` keeps one task per session. Daemons sharing a
PostgreSQL store also see each other's ``session.compaction_start``: a
daemon starts a compaction only if the log, read at its last sequence, holds
no start by another daemon (``daemon``: its lease owner, host and data
directory) that is younger than ``GUARD_SECONDS`` and has no complete; and
it appends its start on condition that the log is still at the sequence its
plan (range, context) was read at (``expected_last_sequence``), planning
again when it moved. Of two daemons
deciding at once, one appends first and the other then sees its start: the
later one refuses (``CompactionInProgressError``) instead of summarising
the same range again.

A start whose daemon was killed has no complete: it blocks the others for
``GUARD_SECONDS`` after it was written (turns go on meanwhile), and not its
own daemon, which restarts with the same owner and knows it runs nothing. A
store used by one daemon (LMDB, memory) needs no guard: the in-process one
suffices, and a start left by a crash is dead.
"""

from __future__ import annotations

import time
from typing import Final

from copilotd import events as ev
from copilotd.errors import CompactionInProgressError
from copilotd.events import SessionEvent
from copilotd.sessions.state import TurnHost
from copilotd.store import SessionRecord, Store

# How long another daemon's start without a complete blocks a compaction: far
# longer than a compaction takes (a few model calls a chunk), short enough
# that a daemon killed mid-compaction does not block the session for long.
GUARD_SECONDS: Final = 600.0
# Events read per page, newest first, looking for a recent start.
GUARD_PAGE_EVENTS: Final = 200
# Plans (and conditional appends of their start) tried while other events keep
# arriving (a running turn).
MAX_START_ATTEMPTS: Final = 20


def running_elsewhere(
    store: Store, session_id: str, last_sequence: int, now: float
) -> SessionEvent | None:
    """Another daemon's recent start without a complete, among the events up to
    ``last_sequence`` (None: there is none)."""
    completed: set[str] = set()
    before = last_sequence + 1
    oldest = now - GUARD_SECONDS
    while before > 1:
        page = store.read_events(
            session_id, before=before, limit=GUARD_PAGE_EVENTS, newest_first=True
        )
        for event in page:
            if event.timestamp.ToNanoseconds() / 1e9 < oldest:
                return None  # older starts are given up for dead
            if event.type == ev.SESSION_COMPACTION_COMPLETE:
                completed.add(event.session_compaction_complete.compaction_id)
            elif event.type == ev.SESSION_COMPACTION_START:
                start = event.session_compaction_start
                if start.compaction_id not in completed and start.daemon != store.lease_owner:
                    return event
        if len(page) < GUARD_PAGE_EVENTS:
            return None
        before = page[-1].sequence
    return None


async def append_start(
    host: TurnHost, session_id: str, start: SessionEvent, planned_from: SessionRecord
) -> None:
    """Append ``start`` unless another daemon is compacting the session
    (``CompactionInProgressError``). On a shared store, only if the log is still
    at ``planned_from``'s last sequence (``SequenceConflictError``: plan again)."""
    store = host.store
    if not store.shared:
        await host.append(session_id, [start])
        return
    start.session_compaction_start.daemon = store.lease_owner
    last = planned_from.metadata.last_sequence
    now = time.time()
    other = running_elsewhere(store, session_id, last, now)
    if other is not None:
        data = other.session_compaction_start
        age = now - other.timestamp.ToNanoseconds() / 1e9
        raise CompactionInProgressError(session_id, data.daemon, data.compaction_id, age)
    await host.append(session_id, [start], expected_last_sequence=last)
