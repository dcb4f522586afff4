"""The PostgreSQL backend's reads of one log: the primitives ``lineage`` composes into
a session's history (a fork's spans several logs)."""

from __future__ import annotations

import itertools
from typing import Any, Final

import psycopg

from copilotd.store import records
from copilotd.store.base import SessionEvent
from copilotd.store.postgres_schema import SCHEMA

# bigint's range; records.recency_key clamps to u64, the columns are signed.
MAX_BIGINT: Final = 2**63 - 1
# One event by id: a lookup in events_ids.
FIND_EVENT: Final = f"SELECT event FROM {SCHEMA}.events WHERE log_number = %s AND event_id = %s"
FIND_SEQUENCE: Final = (
    f"SELECT sequence FROM {SCHEMA}.events WHERE log_number = %s AND event_id = %s"
)


def events_query(columns: str, newest_first: bool) -> str:
    """Events of one log in a window (log_number, after, before, limit): a scan of events_pkey."""
    return (
        f"SELECT {columns} FROM {SCHEMA}.events"
        " WHERE log_number = %s AND sequence > %s AND sequence < %s"
        f" ORDER BY sequence {'DESC' if newest_first else 'ASC'} LIMIT %s"
    )


class LogReader:
    """Reads logs on one connection (in a read snapshot, or a write batch).

    ``bounded``: the read has a byte budget, so sizes are read first from the
    narrow columns, and events past the budget are neither sent nor decoded.
    """

    def __init__(self, connection: psycopg.Connection[Any], *, bounded: bool) -> None:
        self._connection = connection
        self._bounded = bounded

    def __call__(
        self,
        log_number: int,
        after: int,
        before: int,
        limit: int,
        newest_first: bool,
        budget: records.ByteBudget,
    ) -> list[SessionEvent]:
        window = (log_number, min(after, MAX_BIGINT), min(before, MAX_BIGINT))
        if self._bounded:
            sizes = self._connection.execute(
                events_query("sequence, event_bytes", newest_first), (*window, limit)
            ).fetchall()
            taken = list(itertools.takewhile(lambda row: budget.take(row[1]), sizes))
            if not taken:
                return []
            low, high = sorted((taken[0][0], taken[-1][0]))
            window = (log_number, low - 1, high + 1)
            limit = len(taken)
        rows = self._connection.execute(
            events_query("event", newest_first), (*window, limit)
        ).fetchall()
        return [SessionEvent.FromString(raw) for (raw,) in rows]

    def find_sequence(self, log_number: int, event_id: str) -> int | None:
        row = self._connection.execute(FIND_SEQUENCE, (log_number, event_id)).fetchone()
        return None if row is None else int(row[0])
