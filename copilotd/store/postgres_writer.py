"""The PostgreSQL backend's writer: the operations of one ``write_batch`` transaction.

Each operation runs inside a savepoint, so one that raises ``StoreError`` is
rolled back alone; the rules for records (sequence numbers, metadata, turns)
are the shared ones in ``records``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, TypeVar

import psycopg

from copilotd.store import lineage, postgres_search, records
from copilotd.store.base import (
    ChangeKind,
    EventIdTaken,
    PendingMessage,
    QueueEdit,
    SessionEvent,
    SessionExists,
    SessionMetadata,
    SessionNotFound,
    SessionRecord,
    StoreError,
    StoreWriter,
    TurnBusy,
    TurnLost,
)
from copilotd.store.postgres_logs import LogReader
from copilotd.store.postgres_schema import CHANNEL, SCHEMA

T = TypeVar("T")

# bigint's range; records.recency_key clamps to u64, the columns are signed.
MAX_BIGINT: Final = 2**63 - 1
# One purge step of one deleted log: the first events by events_pkey.
PURGE_STEP: Final = (
    f"DELETE FROM {SCHEMA}.events WHERE log_number = %s AND sequence IN"
    f" (SELECT sequence FROM {SCHEMA}.events WHERE log_number = %s ORDER BY sequence LIMIT %s)"
)


class Lease(NamedTuple):
    owner: str
    turn_id: str
    live: bool


def change_payload(kind: ChangeKind, session_id: str, last_sequence: int, owner: str) -> str:
    """A notification's text (PostgreSQL caps it at 8000 bytes; session ids are far shorter)."""
    return json.dumps({"k": kind, "s": session_id, "q": last_sequence, "o": owner})


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
    def __init__(
        self, connection: psycopg.Connection[Any], owner: str, lease_seconds: float
    ) -> None:
        self._connection = connection
        self._owner = owner
        self._lease_seconds = lease_seconds

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
        # A new log holds no ids yet: only repeats among ``events`` are refused.
        _distinct_ids(metadata.session_id, [event.id for event in events], first=1)
        record, stored = records.new_record(metadata, self._next_log_number(), events)
        self._insert_session(record)
        self._insert_events(record.log_number, stored)
        self._notify("created", record)
        return record, stored

    def _next_log_number(self) -> int:
        row = self._execute(f"SELECT nextval('{SCHEMA}.log_numbers')").fetchone()
        assert row is not None
        return int(row[0])

    def _insert_session(self, record: SessionRecord) -> None:
        session_id = record.metadata.session_id
        inserted = self._execute(
            f"INSERT INTO {SCHEMA}.sessions (session_id, log_number, modified_ns, last_sequence,"
            " needs_attention, metadata_bytes, record) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (session_id) DO NOTHING",
            (session_id, record.log_number, *index_columns(record)),
        )
        if inserted.rowcount == 0:
            raise SessionExists(session_id)
        postgres_search.show_session(self._connection, record)
        self._execute(
            f"UPDATE {SCHEMA}.counters SET value = value + 1 WHERE name = 'session_count'"
        )

    def append_events(
        self,
        session_id: str,
        events: Sequence[SessionEvent],
        *,
        expected_last_sequence: int | None = None,
        open_turn: tuple[str, str] | None = None,
        close_turn: bool = False,
        pending: Sequence[PendingMessage] | None = None,
        queue: QueueEdit | None = None,
        fence: str | None = None,
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        record = self._locked_record(session_id)
        # Ids first: a message sent again is told apart from a stale writer.
        self._check_ids_free(record, [event.id for event in events])
        self._check_ids_free(record, records.queued_ids(pending, queue))
        records.check_expected_sequence(record, expected_last_sequence)
        records.check_turn(record, fence, open_turn, close_turn, queue, pending)
        lease = self._lease(session_id)
        others = lease is not None and lease.owner != self._owner
        if fence is not None and (lease is None or others):
            holder = "nobody" if lease is None else f"daemon {lease.owner!r}"
            raise TurnLost(session_id, fence, f"its lease expired and {holder} holds it now")
        if open_turn is not None and lease is not None and others and lease.live:
            raise TurnBusy(session_id, f"daemon {lease.owner!r} holds its lease")
        stored = records.append_to_record(record, events)
        records.update_turn(record, open_turn, close_turn)
        records.update_queue(record, pending, queue)
        self._insert_events(record.log_number, stored)
        if postgres_search.cuts(stored):
            postgres_search.save_cuts(self._connection, record)
        self._save(record)
        if open_turn is not None or fence is not None or close_turn:
            self._settle_lease(record)
        self._notify("events", record)
        return record, stored

    def _lease(self, session_id: str) -> Lease | None:
        row = self._execute(
            f"SELECT owner, turn_id, expires_at > now() FROM {SCHEMA}.turn_leases"
            " WHERE session_id = %s",
            (session_id,),
        ).fetchone()
        return None if row is None else Lease(*row)

    def _settle_lease(self, record: SessionRecord) -> None:
        """After a turn's write: hold the lease while a turn is open or messages wait
        (this daemon starts the next one), free it once the session is idle."""
        session_id = record.metadata.session_id
        if record.open_turn_id or record.pending:
            self._hold_lease(session_id, record.open_turn_id)
        else:
            self._execute(f"DELETE FROM {SCHEMA}.turn_leases WHERE session_id = %s", (session_id,))

    def _hold_lease(self, session_id: str, turn_id: str) -> None:
        self._execute(
            f"INSERT INTO {SCHEMA}.turn_leases VALUES"
            " (%s, %s, %s, now() + make_interval(secs => %s))"
            " ON CONFLICT (session_id) DO UPDATE SET owner = excluded.owner,"
            " turn_id = excluded.turn_id, expires_at = excluded.expires_at",
            (session_id, self._owner, turn_id, self._lease_seconds),
        )

    def fork_session(
        self,
        source_id: str,
        session_id: str,
        up_to_sequence: int,
        events: Sequence[SessionEvent],
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        # The source's row stays locked to the commit: a deletion of it by
        # another daemon waits, then finds the references this fork added.
        source = self._locked_record(source_id)
        records.check_fork_point(source, up_to_sequence)
        reader = LogReader(self._connection, bounded=False)
        last = lineage.event_at(source, reader, up_to_sequence)
        record = records.fork_record(
            source, session_id, up_to_sequence, self._next_log_number(), last
        )
        stored = records.append_to_record(record, events)
        self._insert_session(record)
        for segment in record.ancestry:
            self._execute(
                f"INSERT INTO {SCHEMA}.log_refs VALUES (%s, 2) ON CONFLICT (log_number)"
                f" DO UPDATE SET refs = {SCHEMA}.log_refs.refs + 1",
                (segment.log_number,),
            )
        self._insert_events(record.log_number, stored)
        self._notify("created", record)
        return record, stored

    def _release(self, log_number: int) -> None:
        """One session fewer reads the log; the last one hands its events to the purge.

        The row lock the UPDATE takes orders daemons releasing one log at once:
        each sees the count the one before left.
        """
        row = self._execute(
            f"UPDATE {SCHEMA}.log_refs SET refs = refs - 1 WHERE log_number = %s RETURNING refs",
            (log_number,),
        ).fetchone()
        if row is not None and row[0] > 0:
            return
        if row is not None:
            self._execute(f"DELETE FROM {SCHEMA}.log_refs WHERE log_number = %s", (log_number,))
        self._execute(f"INSERT INTO {SCHEMA}.purge_queue VALUES (%s)", (log_number,))

    def take_over(self, session_id: str) -> str:
        record = self._locked_record(session_id)
        lease = self._lease(session_id)
        previous = ""
        if lease is not None and lease.owner != self._owner:
            if lease.live:
                raise TurnBusy(session_id, f"daemon {lease.owner!r} holds its lease")
            previous = lease.owner
        self._hold_lease(session_id, record.open_turn_id)
        return previous

    def _notify(self, kind: ChangeKind, record: SessionRecord) -> None:
        """Tell the other daemons at commit (a rolled-back savepoint takes it back)."""
        metadata = record.metadata
        payload = change_payload(kind, metadata.session_id, metadata.last_sequence, self._owner)
        self._execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    def delete_session(self, session_id: str) -> None:
        row = self._execute(
            f"DELETE FROM {SCHEMA}.sessions WHERE session_id = %s RETURNING record",
            (session_id,),
        ).fetchone()
        if row is None:
            raise SessionNotFound(session_id)
        record = SessionRecord.FromString(row[0])
        self._execute(f"DELETE FROM {SCHEMA}.turn_leases WHERE session_id = %s", (session_id,))
        postgres_search.hide_session(self._connection, session_id)
        self._execute(
            "SELECT pg_notify(%s, %s)",
            (CHANNEL, change_payload("deleted", session_id, 0, self._owner)),
        )
        for log_number in records.referenced_logs(record):
            self._release(log_number)
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
            # At most as many entries as events: a log's entries go no later than its events.
            self._execute(postgres_search.PURGE_ENTRIES, (log_number, log_number, want))
            removed += deleted
            if deleted < want:
                self._execute(
                    f"DELETE FROM {SCHEMA}.purge_queue WHERE log_number = %s", (log_number,)
                )
        return removed

    def begin_import(self, metadata: SessionMetadata) -> int:
        record, _ = records.new_record(metadata, self._next_log_number(), [])
        self._execute(
            f"INSERT INTO {SCHEMA}.staged_imports (log_number, record, owner) VALUES (%s, %s, %s)",
            (record.log_number, record.SerializeToString(), self._owner),
        )
        return record.log_number

    def stage_events(self, staging: int, events: Sequence[SessionEvent]) -> SessionRecord:
        record = self._staged(staging)
        self._check_ids_free(record, [event.id for event in events])
        stored = records.start_staged(record, events)
        self._insert_events(record.log_number, stored)
        self._execute(
            f"UPDATE {SCHEMA}.staged_imports SET record = %s WHERE log_number = %s",
            (record.SerializeToString(), staging),
        )
        return record

    def commit_import(
        self, staging: int, session_id: str, *, replace: bool
    ) -> tuple[SessionRecord, bool]:
        record = self._staged(staging)
        exists = (
            self._execute(
                f"SELECT 1 FROM {SCHEMA}.sessions WHERE session_id = %s FOR UPDATE", (session_id,)
            ).fetchone()
            is not None
        )
        if exists:
            if not replace:
                raise SessionExists(session_id)
            self.delete_session(session_id)
        records.finish_staged(record, session_id)
        self._execute(f"DELETE FROM {SCHEMA}.staged_imports WHERE log_number = %s", (staging,))
        self._insert_session(record)
        self._notify("created", record)
        return record, exists

    def discard_import(self, staging: int) -> None:
        self._execute(
            f"WITH gone AS (DELETE FROM {SCHEMA}.staged_imports WHERE log_number = %s"
            f" RETURNING log_number) INSERT INTO {SCHEMA}.purge_queue SELECT log_number FROM gone",
            (staging,),
        )

    def _staged(self, staging: int) -> SessionRecord:
        row = self._execute(
            f"SELECT record FROM {SCHEMA}.staged_imports WHERE log_number = %s FOR UPDATE",
            (staging,),
        ).fetchone()
        if row is None:
            raise ValueError(f"no import is being staged under number {staging}")
        return SessionRecord.FromString(row[0])

    def _check_ids_free(self, record: SessionRecord, ids: Sequence[str]) -> None:
        """``EventIdTaken`` for an id the log holds or that ``ids`` repeats; nothing written."""
        metadata = record.metadata
        distinct = _distinct_ids(metadata.session_id, ids, first=metadata.last_sequence + 1)
        if not distinct:
            return
        row = self._execute(
            f"SELECT event_id, sequence FROM {SCHEMA}.events"
            " WHERE log_number = %s AND event_id = ANY(%s) ORDER BY sequence LIMIT 1",
            (record.log_number, distinct),
        ).fetchone()
        if row is not None:
            raise EventIdTaken(metadata.session_id, row[0], row[1])
        if record.ancestry:
            reader = LogReader(self._connection, bounded=False)
            for event_id in distinct:
                inherited = lineage.inherited_sequence(record, event_id, reader.find_sequence)
                if inherited is not None:
                    raise EventIdTaken(metadata.session_id, event_id, inherited)

    def set_pinned(self, session_id: str, pinned: bool) -> SessionRecord:
        record = self._locked_record(session_id)
        record.metadata.pinned = pinned
        self._save(record)
        self._notify("updated", record)
        return record

    def _insert_events(self, log_number: int, events: list[SessionEvent]) -> None:
        if not events:
            return
        rows = []
        for event in events:
            raw = event.SerializeToString()
            rows.append((log_number, event.sequence, event.id, len(raw), raw))
        with self._connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {SCHEMA}.events (log_number, sequence, event_id, event_bytes, event)"
                " VALUES (%s, %s, %s, %s, %s)",
                rows,
            )
        # In the events' transaction: committed together, found by every daemon at once.
        postgres_search.index_events(self._connection, log_number, events)

    def _save(self, record: SessionRecord) -> None:
        self._execute(
            f"UPDATE {SCHEMA}.sessions SET modified_ns = %s, last_sequence = %s,"
            " needs_attention = %s, metadata_bytes = %s, record = %s WHERE session_id = %s",
            (*index_columns(record), record.metadata.session_id),
        )


def _distinct_ids(session_id: str, ids: Sequence[str], *, first: int) -> list[str]:
    """The non-empty ``ids``; ``EventIdTaken`` if one repeats (``first``: the first's sequence)."""
    seen: dict[str, int] = {}
    for position, event_id in enumerate(ids):
        if event_id in seen:
            raise EventIdTaken(session_id, event_id, seen[event_id])
        if event_id:
            seen[event_id] = first + position
    return list(seen)
