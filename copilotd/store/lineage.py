"""A session's log across the logs it inherits: the one place forks are read.

A fork's history is its ancestors' logs up to the fork points, then its own
log (``SessionRecord.ancestry``). Each backend supplies small primitives over
one log (read a window of it, look an event id up in it); this module composes
them into the session's history, so that no backend reads forks its own way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from copilotd.store.base import SessionEvent, SessionRecord
from copilotd.store.records import MAX_U64, ByteBudget


class ReadLog(Protocol):
    """Events of one log with ``after < sequence < before``, as ``Store.read_events``."""

    def __call__(
        self,
        log_number: int,
        after: int,
        before: int,
        limit: int,
        newest_first: bool,
        budget: ByteBudget,
    ) -> list[SessionEvent]: ...


# The sequence an event id has in one log, or None.
FindSequence = Callable[[int, str], int | None]


def spans(record: SessionRecord) -> list[tuple[int, int, int]]:
    """``(log_number, first, last)`` per log the session reads, oldest first."""
    parts = []
    first = 1
    for segment in record.ancestry:
        parts.append((segment.log_number, first, segment.last_sequence))
        first = segment.last_sequence + 1
    parts.append((record.log_number, first, MAX_U64))
    return parts


def read(
    record: SessionRecord,
    read_log: ReadLog,
    *,
    after: int,
    before: int | None,
    limit: int,
    newest_first: bool,
    budget: ByteBudget,
) -> list[SessionEvent]:
    """``Store.read_events`` over the session's whole history, log after log."""
    if before is None:
        before = record.metadata.last_sequence + 1
    parts = spans(record)
    if newest_first:
        parts.reverse()
    events: list[SessionEvent] = []
    for log_number, first, last in parts:
        low, high = max(after, first - 1), min(before, last + 1)
        if high - low < 2:
            continue
        wanted = limit - len(events)
        if wanted <= 0:
            break
        page = read_log(log_number, low, high, wanted, newest_first, budget)
        events.extend(page)
        if len(page) < wanted and page_cut(page, low, high, newest_first):
            break  # the byte budget ran out inside this log
    return events


def page_cut(page: list[SessionEvent], low: int, high: int, newest_first: bool) -> bool:
    """Whether a short page stopped before the end of its window (its byte budget)."""
    if not page:
        return True
    end = page[-1].sequence
    return end > low + 1 if newest_first else end < high - 1


def event_at(record: SessionRecord, read_log: ReadLog, sequence: int) -> SessionEvent:
    """The session's event of ``sequence`` (which must exist), from the log holding it."""
    (event,) = read_log(
        log_of(record, sequence), sequence - 1, sequence + 1, 1, False, ByteBudget(None)
    )
    return event


def find(
    record: SessionRecord, event_id: str, find_sequence: FindSequence, read_log: ReadLog
) -> SessionEvent | None:
    """The session's event with id ``event_id`` in any log it reads, or None."""
    sequence = inherited_sequence(record, event_id, find_sequence, own=True)
    if sequence is None:
        return None
    log_number = log_of(record, sequence)
    found = read_log(log_number, sequence - 1, sequence + 1, 1, False, ByteBudget(None))
    return found[0] if found else None


def inherited_sequence(
    record: SessionRecord, event_id: str, find_sequence: FindSequence, *, own: bool = False
) -> int | None:
    """The sequence of ``event_id`` in the history the session inherits (and, with
    ``own``, in its own log), or None: an id past a fork point is not the fork's."""
    if not event_id:
        return None
    for log_number, first, last in spans(record)[: None if own else -1]:
        sequence = find_sequence(log_number, event_id)
        if sequence is not None and first <= sequence <= last:
            return sequence
    return None


def log_of(record: SessionRecord, sequence: int) -> int:
    """The log that holds the session's event ``sequence``."""
    for log_number, _first, last in spans(record):
        if sequence <= last:
            return log_number
    return record.log_number
