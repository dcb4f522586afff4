"""The PostgreSQL backend's writer: the operations of one ``write_batch`` transaction.

Each operation runs inside a savepoint, so one that raises ``StoreError`` is
rolled back alone; the rules for records (sequence numbers, metadata, turns)
are the shared ones in ``records``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import psycopg

from copilotd.store import records
from copilotd.store.base import (
    PendingMessage,
    SessionEvent,
    SessionExists,
    SessionMetadata,
    SessionNotFound,
    SessionRecord,
    StoreError,
    StoreWriter,
)
from copilotd.store.postgres_schema import SCHEMA

T = TypeVar("T")

# bigint's range; records.recency_key clamps to u64, the columns are signed.
MAX_BIGINT: Final = 2**63 - 1
# One purge step of one deleted log: the first events by events_pkey.
PURGE_STEP: Final = (
    f"DELETE FROM {SCHEMA}.events WHERE log_number = %s AND sequence IN"
    f" (SELECT sequence FROM {SCHEMA}.events WHERE log_number = %s ORDER BY sequence LIMIT %s)"
)


def modified_ns(metadata: SessionMetadata) -> int:
    return min(max(metadata.modified_time.ToNanoseconds(), 0), MAX_BIGINT)


def index_columns(record: SessionRecord) -> tuple[int, int, bool, int, bytes]:
    """The columns copied from a record: modified_ns, last_sequence, needs_attention,
    metadata_bytes, and the record itself."""
    metadata = record.metadata
    return (
        modified_ns(metadata),
        metadata.last_sequence,
        records.has_open_turn(record),
        metadata.ByteSize(),
        record.SerializeToString(),
    )


class PostgresWriter(StoreWriter):
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def run(self, operation: Callable[[StoreWriter], T]) -> T | StoreError:
        try:
            with self._connection.transaction():
                return operation(self)
        except StoreError as error:
            return error

    def _execute(self, query: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self._connection.execute(query, params)

    def _locked_record(self, session_id: str) -> SessionRecord:
        """The session's record, its row locked until the transaction ends."""
        row = self._execute(
            f"SELECT record FROM {SCHEMA}.sessions WHERE session_id = %s FOR UPDATE",
            (session_id,),
        ).fetchone()
        if row is None:
            raise SessionNotFound(session_id)
        return SessionRecord.FromString(row[0])

    def create_session(
        self, metadata: SessionMetadata, events: Sequence[SessionEvent]
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        if not metadata.session_id:
            raise ValueError("metadata.session_id must be set to create a session")
        # The number is taken before we know the id is free: a sequence is
        # never rolled back, and a skipped log number costs nothing.
        row = self._execute(f"SELECT nextval('{SCHEMA}.log_numbers')").fetchone()
        assert row is not None
        record, stored = records.new_record(metadata, int(row[0]), events)
        inserted = self._execute(
            f"INSERT INTO {SCHEMA}.sessions (session_id, log_number, modified_ns, last_sequence,"
            " needs_attention, metadata_bytes, record) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (session_id) DO NOTHING",
            (metadata.session_id, record.log_number, *index_columns(record)),
        )
        if inserted.rowcount == 0:
            raise SessionExists(metadata.session_id)
        self._execute(
            f"UPDATE {SCHEMA}.counters SET value = value + 1 WHERE name = 'session_count'"
        )
        self._insert_events(record.log_number, stored)
        return record, stored

    def append_events(
        self,
        session_id: str,
        events: Sequence[SessionEvent],
        *,
        expected_last_sequence: int | None = None,
        open_turn: tuple[str, str] | None = None,
        close_turn: bool = False,
        pending: Sequence[PendingMessage] | None = None,
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        record = self._locked_record(session_id)
        records.check_expected_sequence(record, expected_last_sequence)
        stored = records.append_to_record(record, events)
        records.update_turn(record, open_turn, close_turn)
        records.update_pending(record, pending)
        self._insert_events(record.log_number, stored)
        self._save(record)
        return record, stored

    def delete_session(self, session_id: str) -> None:
        row = self._execute(
            f"DELETE FROM {SCHEMA}.sessions WHERE session_id = %s RETURNING log_number",
            (session_id,),
        ).fetchone()
        if row is None:
            raise SessionNotFound(session_id)
        self._execute(f"INSERT INTO {SCHEMA}.purge_queue VALUES (%s)", (row[0],))
        self._execute(
            f"UPDATE {SCHEMA}.counters SET value = value - 1 WHERE name = 'session_count'"
        )

    def purge_deleted(self, limit: int) -> int:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        removed = 0
        while removed < limit:
            # SKIP LOCKED: daemons purging at once take different logs, never
            # the same events twice, and never wait for each other.
            row = self._execute(
                f"SELECT log_number FROM {SCHEMA}.purge_queue ORDER BY log_number"
                " LIMIT 1 FOR UPDATE SKIP LOCKED"
            ).fetchone()
            if row is None:
                break
            log_number = row[0]
            want = limit - removed
            deleted = self._execute(PURGE_STEP, (log_number, log_number, want)).rowcount
            removed += deleted
            if deleted < want:
                self._execute(
                    f"DELETE FROM {SCHEMA}.purge_queue WHERE log_number = %s", (log_number,)
                )
        return removed

    def set_pinned(self, session_id: str, pinned: bool) -> SessionRecord:
        record = self._locked_record(session_id)
        record.metadata.pinned = pinned
        self._save(record)
        return record

    def _insert_events(self, log_number: int, events: list[SessionEvent]) -> None:
        if not events:
            return
        rows = []
        for event in events:
            raw = event.SerializeToString()
            rows.append((log_number, event.sequence, len(raw), raw))
        with self._connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {SCHEMA}.events (log_number, sequence, event_bytes, event)"
                " VALUES (%s, %s, %s, %s)",
                rows,
            )

    def _save(self, record: SessionRecord) -> None:
        self._execute(
            f"UPDATE {SCHEMA}.sessions SET modified_ns = %s, last_sequence = %s,"
            " needs_attention = %s, metadata_bytes = %s, record = %s WHERE session_id = %s",
            (*index_columns(record), record.metadata.session_id),
        )
