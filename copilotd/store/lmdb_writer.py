"""The LMDB backend's writer: a batch's operations, each in its own child transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import lmdb

from copilotd.store import lineage, records
from copilotd.store.base import (
    EventIdTaken,
    PendingMessage,
    QueueEdit,
    SessionEvent,
    SessionExists,
    SessionMetadata,
    SessionNotFound,
    SessionRecord,
    StoreError,
    StoreFull,
    StoreWriter,
)
from copilotd.store.lmdb_environment import NEXT_LOG_NUMBER_KEY, Tables, load_record
from copilotd.store.lmdb_logs import LogReader
from copilotd.store.records import U64, event_id_key, event_key, recency_key, session_key

T = TypeVar("T")


class LmdbWriter(StoreWriter):
    """Runs each operation in its own child transaction of the batch's.

    Under a size cap, ``space_check`` runs after each operation that may not
    use the reserve; when it reports the store full, that operation is undone
    and gets the ``StoreFull`` error, and the batch goes on.
    """

    def __init__(
        self,
        env: lmdb.Environment,
        tables: Tables,
        batch: lmdb.Transaction[bytes],
        space_check: Callable[[lmdb.Transaction[bytes]], StoreFull | None] | None = None,
    ) -> None:
        self._env = env
        self._tables = tables
        self._batch = batch
        self._txn = batch
        self._space_check = space_check
        self._may_use_reserve = False

    def run(self, operation: Callable[[StoreWriter], T]) -> T | StoreError:
        """Run ``operation``; if it raises ``StoreError``, undo it and return the error."""
        child = self._txn = self._env.begin(write=True, parent=self._batch)
        self._may_use_reserve = False
        try:
            result = operation(self)
            if self._space_check is not None and not self._may_use_reserve:
                full = self._space_check(child)
                if full is not None:
                    raise full
        except StoreError as exc:
            child.abort()
            return exc
        except BaseException:
            child.abort()
            raise
        finally:
            self._txn = self._batch
        child.commit()
        return result

    def create_session(
        self, metadata: SessionMetadata, events: Sequence[SessionEvent]
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        key = session_key(metadata.session_id)
        if self._txn.get(key, db=self._tables.meta) is not None:
            raise SessionExists(metadata.session_id)
        record, stored = records.new_record(metadata, self._take_log_number(), events)
        self._put_events(record, stored)
        self._save(record, old_recency_key=None)
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
        queue: QueueEdit | None = None,
        fence: str | None = None,
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        # Ending a turn, and starting a queued message (its text is already
        # stored in the queue), may use the reserve: neither may be refused
        # for lack of space without leaving a half turn or dropping a message.
        starts_queued = pending is not None or (queue is not None and bool(queue.remove))
        self._may_use_reserve = close_turn or (open_turn is not None and starts_queued)
        record = load_record(self._txn, self._tables, session_id)
        if record is None:
            raise SessionNotFound(session_id)
        # Ids first: a message sent again is told apart from a stale writer.
        self._check_ids_free(record, [event.id for event in events])
        self._check_ids_free(record, records.queued_ids(pending, queue))
        records.check_expected_sequence(record, expected_last_sequence)
        records.check_turn(record, fence, open_turn, close_turn, queue, pending)
        old_recency_key = recency_key(record.metadata)
        stored = records.append_to_record(record, events)
        records.update_turn(record, open_turn, close_turn)
        records.update_queue(record, pending, queue)
        self._put_events(record, stored)
        self._save(record, old_recency_key)
        return record, stored

    def fork_session(
        self,
        source_id: str,
        session_id: str,
        up_to_sequence: int,
        events: Sequence[SessionEvent],
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        source = load_record(self._txn, self._tables, source_id)
        if source is None:
            raise SessionNotFound(source_id)
        if self._txn.get(session_key(session_id), db=self._tables.meta) is not None:
            raise SessionExists(session_id)
        records.check_fork_point(source, up_to_sequence)
        last = lineage.event_at(source, LogReader(self._txn, self._tables), up_to_sequence)
        record = records.fork_record(
            source, session_id, up_to_sequence, self._take_log_number(), last
        )
        for segment in record.ancestry:
            self._add_ref(segment.log_number)
        stored = records.append_to_record(record, events)
        self._put_events(record, stored)
        self._save(record, old_recency_key=None)
        return record, stored

    def _add_ref(self, log_number: int) -> None:
        key = U64.pack(log_number)
        raw = self._txn.get(key, db=self._tables.log_refs)
        count = 1 if raw is None else U64.unpack(raw)[0]
        self._txn.put(key, U64.pack(count + 1), db=self._tables.log_refs)

    def _release(self, log_number: int) -> None:
        """One session fewer reads the log; the last one hands its events to the purge."""
        key = U64.pack(log_number)
        raw = self._txn.get(key, db=self._tables.log_refs)
        count = 1 if raw is None else U64.unpack(raw)[0]
        if count > 1:
            self._txn.put(key, U64.pack(count - 1), db=self._tables.log_refs)
            return
        self._txn.delete(key, db=self._tables.log_refs)
        # Unreachable from now on: log numbers are never reused.
        self._txn.put(key, b"", db=self._tables.purge)

    def take_over(self, session_id: str) -> str:
        # One daemon uses this store: every lease is its own already.
        if load_record(self._txn, self._tables, session_id) is None:
            raise SessionNotFound(session_id)
        return ""

    def delete_session(self, session_id: str) -> None:
        self._may_use_reserve = True
        record = load_record(self._txn, self._tables, session_id)
        if record is None:
            raise SessionNotFound(session_id)
        self._remove(record)

    def _remove(self, record: SessionRecord) -> None:
        key = session_key(record.metadata.session_id)
        self._txn.delete(key, db=self._tables.meta)
        self._txn.delete(key, db=self._tables.open_turns)
        self._txn.delete(recency_key(record.metadata), db=self._tables.recency)
        for log_number in records.referenced_logs(record):
            self._release(log_number)

    def purge_deleted(self, limit: int) -> int:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        removed = 0
        with (
            self._txn.cursor(db=self._tables.purge) as pending,
            self._txn.cursor(db=self._tables.events) as events,
            self._txn.cursor(db=self._tables.event_ids) as ids,
        ):
            while removed < limit and pending.first():
                prefix = pending.key()
                events.set_range(prefix)
                ids.set_range(prefix)
                # A log has at most one id per event: removing one of each per
                # step empties its ids no later than its events.
                while removed < limit and events.key()[: U64.size] == prefix:
                    events.delete()
                    if ids.key()[: U64.size] == prefix:
                        ids.delete()
                    removed += 1
                if events.key()[: U64.size] != prefix:
                    while ids.key()[: U64.size] == prefix:  # ids of events never written
                        ids.delete()
                    pending.delete()
        return removed

    def set_pinned(self, session_id: str, pinned: bool) -> SessionRecord:
        record = load_record(self._txn, self._tables, session_id)
        if record is None:
            raise SessionNotFound(session_id)
        record.metadata.pinned = pinned
        self._save(record, recency_key(record.metadata))
        return record

    def begin_import(self, metadata: SessionMetadata) -> int:
        record, _ = records.new_record(metadata, self._take_log_number(), [])
        self._txn.put(
            U64.pack(record.log_number), record.SerializeToString(), db=self._tables.staging
        )
        return record.log_number

    def stage_events(self, staging: int, events: Sequence[SessionEvent]) -> SessionRecord:
        record = self._staged(staging)
        stored = records.start_staged(record, events)
        self._put_events(record, stored)
        self._txn.put(U64.pack(staging), record.SerializeToString(), db=self._tables.staging)
        return record

    def commit_import(
        self, staging: int, session_id: str, *, replace: bool
    ) -> tuple[SessionRecord, bool]:
        record = self._staged(staging)
        existing = load_record(self._txn, self._tables, session_id)
        if existing is not None:
            if not replace:
                raise SessionExists(session_id)
            self._remove(existing)
        records.finish_staged(record, session_id)
        self._txn.delete(U64.pack(staging), db=self._tables.staging)
        self._save(record, old_recency_key=None)
        return record, existing is not None

    def discard_import(self, staging: int) -> None:
        self._may_use_reserve = True
        key = U64.pack(staging)
        if self._txn.delete(key, db=self._tables.staging):
            self._txn.put(key, b"", db=self._tables.purge)

    def _staged(self, staging: int) -> SessionRecord:
        raw = self._txn.get(U64.pack(staging), db=self._tables.staging)
        if raw is None:
            raise ValueError(f"no import is being staged under number {staging}")
        return SessionRecord.FromString(raw)

    def _check_ids_free(self, record: SessionRecord, ids: Sequence[str]) -> None:
        for event_id in ids:
            if not event_id:
                continue
            raw = self._txn.get(
                event_id_key(record.log_number, event_id), db=self._tables.event_ids
            )
            if raw is not None:
                raise EventIdTaken(record.metadata.session_id, event_id, U64.unpack(raw)[0])
            if record.ancestry:
                reader = LogReader(self._txn, self._tables)
                inherited = lineage.inherited_sequence(record, event_id, reader.find_sequence)
                if inherited is not None:
                    raise EventIdTaken(record.metadata.session_id, event_id, inherited)

    def _take_log_number(self) -> int:
        raw = self._txn.get(NEXT_LOG_NUMBER_KEY, db=self._tables.sys)
        if raw is None:
            raise RuntimeError("the store's sys table has no next_log_number")
        (number,) = U64.unpack(raw)
        self._txn.put(NEXT_LOG_NUMBER_KEY, U64.pack(number + 1), db=self._tables.sys)
        return int(number)

    def _put_events(self, record: SessionRecord, events: list[SessionEvent]) -> None:
        """Write ``events`` and index their ids; ``EventIdTaken`` for an id the log holds."""
        log_number = record.log_number
        for event in events:
            if event.id:
                id_key = event_id_key(log_number, event.id)
                sequence = U64.pack(event.sequence)
                if not self._txn.put(id_key, sequence, db=self._tables.event_ids, overwrite=False):
                    (taken,) = U64.unpack(
                        self._txn.get(id_key, db=self._tables.event_ids) or sequence
                    )
                    raise EventIdTaken(record.metadata.session_id, event.id, taken)
            key = event_key(log_number, event.sequence)
            self._txn.put(key, event.SerializeToString(), db=self._tables.events)

    def _save(self, record: SessionRecord, old_recency_key: bytes | None) -> None:
        """Write ``record`` and bring the listing and open-turn indexes in line with it."""
        key = session_key(record.metadata.session_id)
        self._txn.put(key, record.SerializeToString(), db=self._tables.meta)
        new_recency_key = recency_key(record.metadata)
        if old_recency_key is not None and old_recency_key != new_recency_key:
            self._txn.delete(old_recency_key, db=self._tables.recency)
        self._txn.put(new_recency_key, b"", db=self._tables.recency)
        if records.has_open_turn(record):
            self._txn.put(key, b"", db=self._tables.open_turns)
        else:
            self._txn.delete(key, db=self._tables.open_turns)
