"""The LMDB backend's reads of one log: the primitives ``lineage`` composes into a
session's history (a fork's spans several logs)."""

from __future__ import annotations

import lmdb

from copilotd.store import records
from copilotd.store.base import SessionEvent
from copilotd.store.lmdb_environment import Tables
from copilotd.store.records import U64, event_id_key, event_key


class LogReader:
    """Reads logs inside one transaction (a read's, or a write batch's)."""

    def __init__(self, txn: lmdb.Transaction[bytes], tables: Tables) -> None:
        self._txn = txn
        self._tables = tables

    def __call__(
        self,
        log_number: int,
        after: int,
        before: int,
        limit: int,
        newest_first: bool,
        budget: records.ByteBudget,
    ) -> list[SessionEvent]:
        with self._txn.cursor(db=self._tables.events) as cursor:
            scan = _scan_backward if newest_first else _scan_forward
            return scan(cursor, log_number, after, before, limit, budget)

    def find_sequence(self, log_number: int, event_id: str) -> int | None:
        raw = self._txn.get(event_id_key(log_number, event_id), db=self._tables.event_ids)
        return None if raw is None else int(U64.unpack(raw)[0])


def seek_below(cursor: lmdb.Cursor[bytes], key: bytes) -> bool:
    """Put ``cursor`` on the last key strictly below ``key``; False if there is none."""
    if cursor.set_range(key):
        return cursor.prev()
    return cursor.last()


def _scan_forward(
    cursor: lmdb.Cursor[bytes],
    log_number: int,
    after: int,
    before: int,
    limit: int,
    budget: records.ByteBudget,
) -> list[SessionEvent]:
    events: list[SessionEvent] = []
    if after >= records.MAX_U64:
        return events
    prefix = U64.pack(log_number)
    positioned = cursor.set_range(event_key(log_number, after + 1))
    while positioned and len(events) < limit:
        key, value = cursor.item()
        if key[: U64.size] != prefix or U64.unpack_from(key, U64.size)[0] >= before:
            break
        if not budget.take(len(value)):
            break
        events.append(SessionEvent.FromString(value))
        positioned = cursor.next()
    return events


def _scan_backward(
    cursor: lmdb.Cursor[bytes],
    log_number: int,
    after: int,
    before: int,
    limit: int,
    budget: records.ByteBudget,
) -> list[SessionEvent]:
    events: list[SessionEvent] = []
    prefix = U64.pack(log_number)
    positioned = seek_below(cursor, event_key(log_number, min(before, records.MAX_U64)))
    while positioned and len(events) < limit:
        key, value = cursor.item()
        if key[: U64.size] != prefix or U64.unpack_from(key, U64.size)[0] <= after:
            break
        if not budget.take(len(value)):
            break
        events.append(SessionEvent.FromString(value))
        positioned = cursor.prev()
    return events
