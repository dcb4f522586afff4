"""An in-memory store: a test double, and proof the contract suite is backend-generic.

Nothing survives the process. Values are kept serialized, so every read hands
out a fresh copy and no caller can change stored state through a reference.
One lock serialises everything: reads wait for a batch to finish, which is
how they never see uncommitted data.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from copilotd.store import lineage, records
from copilotd.store.base import (
    BackupUnsupported,
    EventIdTaken,
    PendingMessage,
    QueueEdit,
    SessionEvent,
    SessionExists,
    SessionMetadata,
    SessionNotFound,
    SessionRecord,
    Store,
    StoreError,
    StoreWriter,
)

T = TypeVar("T")

# Undo steps are called for their effect; what they return is ignored.
_Undo = Callable[[], object]


class _State:
    """The tables; mirrors the LMDB backend's so both list and page alike."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        # log number -> events by sequence - 1 - base (a fork's own log starts
        # after its fork point).
        self.logs: dict[int, list[bytes]] = {}
        self.bases: dict[int, int] = {}
        self.ids: dict[int, dict[str, int]] = {}  # log number -> event id -> sequence
        self.staging: dict[int, bytes] = {}  # log number -> the record of an import
        self.recency: list[bytes] = []  # sorted listing keys
        self.open_turns: set[str] = set()
        self.next_log_number = 1
        # Deleted sessions' events not yet purged, by log number (as on disk).
        self.purging: dict[int, list[bytes]] = {}
        # Logs read by more than their own session (forks): log number -> readers.
        self.refs: dict[int, int] = {}

    def record(self, session_id: str) -> SessionRecord | None:
        raw = self.records.get(session_id)
        return None if raw is None else SessionRecord.FromString(raw)

    def read_log(
        self,
        log_number: int,
        after: int,
        before: int,
        limit: int,
        newest_first: bool,
        budget: records.ByteBudget,
    ) -> list[SessionEvent]:
        events, base = self.logs[log_number], self.bases[log_number]
        low = max(0, after - base)
        high = max(low, min(before - 1 - base, len(events)))
        if newest_first:
            window = events[max(low, high - limit) : high][::-1]
        else:
            window = events[low : min(high, low + limit)]
        return [
            SessionEvent.FromString(raw)
            for raw in itertools.takewhile(lambda raw: budget.take(len(raw)), window)
        ]

    def find_sequence(self, log_number: int, event_id: str) -> int | None:
        return self.ids[log_number].get(event_id)


class MemoryStore(Store):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State()
        self._closed = False

    def write_batch(self, operations: Sequence[Callable[[StoreWriter], T]]) -> list[T | StoreError]:
        with self._lock:
            self._check_open()
            writer = _MemoryWriter(self._state)
            try:
                return [writer.run(operation) for operation in operations]
            except BaseException:
                writer.rollback(0)
                raise

    def get_session(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            self._check_open()
            return self._state.record(session_id)

    def read_events(
        self,
        session_id: str,
        *,
        after: int = 0,
        before: int | None = None,
        limit: int,
        newest_first: bool = False,
        max_bytes: int | None = None,
    ) -> list[SessionEvent]:
        if after < 0 or (before is not None and before < 0) or limit < 0:
            raise ValueError(f"bad event window: after={after}, before={before}, limit={limit}")
        budget = records.ByteBudget(max_bytes)
        with self._lock:
            self._check_open()
            record = self._state.record(session_id)
            if record is None:
                raise SessionNotFound(session_id)
            return lineage.read(
                record,
                self._state.read_log,
                after=after,
                before=before,
                limit=limit,
                newest_first=newest_first,
                budget=budget,
            )

    def find_event(self, session_id: str, event_id: str) -> SessionEvent | None:
        with self._lock:
            self._check_open()
            record = self._state.record(session_id)
            if record is None:
                raise SessionNotFound(session_id)
            return lineage.find(record, event_id, self._state.find_sequence, self._state.read_log)

    def list_sessions(
        self, *, limit: int, page_token: str = "", max_bytes: int | None = None
    ) -> tuple[list[SessionRecord], str]:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        budget = records.ByteBudget(max_bytes)
        with self._lock:
            self._check_open()
            recency = self._state.recency
            end = len(recency)
            if page_token:
                end = bisect.bisect_left(recency, records.decode_page_token(page_token))
            start = max(0, end - limit)
            keys = recency[start:end][::-1]
            page: list[SessionRecord] = []
            last_key = b""
            for key in keys:
                record = self._state.record(key[records.U64.size :].decode())
                if record is None:
                    continue
                if not budget.take(record.metadata.ByteSize()):
                    return page, records.encode_page_token(last_key)
                page.append(record)
                last_key = key
            return page, records.encode_page_token(keys[-1]) if start > 0 else ""

    def sessions_with_open_turns(self) -> list[SessionRecord]:
        with self._lock:
            self._check_open()
            records = (self._state.record(sid) for sid in sorted(self._state.open_turns))
            return [record for record in records if record is not None]

    def session_count(self) -> int:
        with self._lock:
            self._check_open()
            return len(self._state.records)

    def size_bytes(self) -> int:
        with self._lock:
            self._check_open()
            state = self._state
            records = sum(len(raw) for raw in state.records.values())
            return records + sum(len(raw) for log in state.logs.values() for raw in log)

    def copy_to(self, fd: int) -> None:
        raise BackupUnsupported(
            "the in-memory store keeps nothing beyond the process, so it has no backup; "
            "back up a daemon that runs on the LMDB store"
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")


class _MemoryWriter(StoreWriter):
    """Changes state in place and journals how to undo each change.

    An operation that raises is undone back to where it started; a batch
    that fails is undone entirely.
    """

    def __init__(self, state: _State) -> None:
        self._state = state
        self._undo: list[_Undo] = []

    def run(self, operation: Callable[[StoreWriter], T]) -> T | StoreError:
        mark = len(self._undo)
        try:
            return operation(self)
        except StoreError as exc:
            self.rollback(mark)
            return exc

    def rollback(self, mark: int) -> None:
        while len(self._undo) > mark:
            self._undo.pop()()

    def create_session(
        self, metadata: SessionMetadata, events: Sequence[SessionEvent]
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        session_id = metadata.session_id
        if session_id in self._state.records:
            raise SessionExists(session_id)
        record, stored = records.new_record(metadata, self._take_log_number(), events)
        self._new_log(record.log_number)
        self._extend_log(record, stored)
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
        record = self._state.record(session_id)
        if record is None:
            raise SessionNotFound(session_id)
        # Ids first: a message sent again is told apart from a stale writer.
        self._check_ids_free(record, [event.id for event in events])
        self._check_ids_free(record, records.queued_ids(pending, queue))
        records.check_expected_sequence(record, expected_last_sequence)
        records.check_turn(record, fence, open_turn, close_turn, queue, pending)
        old_recency_key = records.recency_key(record.metadata)
        stored = records.append_to_record(record, events)
        records.update_turn(record, open_turn, close_turn)
        records.update_queue(record, pending, queue)
        self._extend_log(record, stored)
        self._save(record, old_recency_key)
        return record, stored

    def fork_session(
        self,
        source_id: str,
        session_id: str,
        up_to_sequence: int,
        events: Sequence[SessionEvent],
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        state = self._state
        source = state.record(source_id)
        if source is None:
            raise SessionNotFound(source_id)
        if session_id in state.records:
            raise SessionExists(session_id)
        records.check_fork_point(source, up_to_sequence)
        last = lineage.event_at(source, state.read_log, up_to_sequence)
        record = records.fork_record(
            source, session_id, up_to_sequence, self._take_log_number(), last
        )
        for segment in record.ancestry:
            self._add_ref(segment.log_number)
        stored = records.append_to_record(record, events)
        self._new_log(record.log_number, base=up_to_sequence)
        self._extend_log(record, stored)
        self._save(record, old_recency_key=None)
        return record, stored

    def _add_ref(self, log_number: int) -> None:
        refs = self._state.refs
        old = refs.get(log_number)
        refs[log_number] = (old or 1) + 1
        self._undo.append(functools.partial(_restore, refs, log_number, old))

    def _release(self, log_number: int) -> None:
        """One session fewer reads the log; the last one hands its events to the purge."""
        refs = self._state.refs
        old = refs.get(log_number)
        if old is not None and old > 1:
            refs[log_number] = old - 1
        else:
            refs.pop(log_number, None)
            self._to_purge(log_number)
        self._undo.append(functools.partial(_restore, refs, log_number, old))

    def take_over(self, session_id: str) -> str:
        # One daemon uses this store: every lease is its own already.
        if self._state.record(session_id) is None:
            raise SessionNotFound(session_id)
        return ""

    def delete_session(self, session_id: str) -> None:
        record = self._state.record(session_id)
        if record is None:
            raise SessionNotFound(session_id)
        self._remove(record)

    def _remove(self, record: SessionRecord) -> None:
        state = self._state
        session_id = record.metadata.session_id
        raw = state.records.pop(session_id)
        self._undo.append(lambda: state.records.__setitem__(session_id, raw))
        for log_number in records.referenced_logs(record):
            self._release(log_number)
        self._remove_recency(records.recency_key(record.metadata))
        self._set_open_turn(session_id, False)

    def _to_purge(self, log_number: int) -> None:
        state = self._state
        log, ids = state.logs.pop(log_number), state.ids.pop(log_number)
        state.purging[log_number] = log
        self._undo.append(lambda: state.logs.__setitem__(log_number, log))
        self._undo.append(lambda: state.ids.__setitem__(log_number, ids))
        self._undo.append(lambda: state.purging.pop(log_number))

    def begin_import(self, metadata: SessionMetadata) -> int:
        record, _ = records.new_record(metadata, self._take_log_number(), [])
        self._new_log(record.log_number)
        self._set_staged(record)
        return record.log_number

    def stage_events(self, staging: int, events: Sequence[SessionEvent]) -> SessionRecord:
        record = self._staged(staging)
        stored = records.start_staged(record, events)
        self._extend_log(record, stored)
        self._set_staged(record)
        return record

    def commit_import(
        self, staging: int, session_id: str, *, replace: bool
    ) -> tuple[SessionRecord, bool]:
        record = self._staged(staging)
        existing = self._state.record(session_id)
        if existing is not None:
            if not replace:
                raise SessionExists(session_id)
            self._remove(existing)
        records.finish_staged(record, session_id)
        self._unset_staged(staging)
        self._save(record, old_recency_key=None)
        return record, existing is not None

    def discard_import(self, staging: int) -> None:
        if staging in self._state.staging:
            self._unset_staged(staging)
            self._to_purge(staging)

    def _staged(self, staging: int) -> SessionRecord:
        raw = self._state.staging.get(staging)
        if raw is None:
            raise ValueError(f"no import is being staged under number {staging}")
        return SessionRecord.FromString(raw)

    def _set_staged(self, record: SessionRecord) -> None:
        staging = self._state.staging
        number = record.log_number
        old = staging.get(number)
        staging[number] = record.SerializeToString()
        if old is None:
            self._undo.append(lambda: staging.pop(number))
        else:
            self._undo.append(lambda: staging.__setitem__(number, old))

    def _unset_staged(self, number: int) -> None:
        staging = self._state.staging
        raw = staging.pop(number)
        self._undo.append(lambda: staging.__setitem__(number, raw))

    def _check_ids_free(self, record: SessionRecord, ids: Sequence[str]) -> None:
        known = self._state.ids[record.log_number]
        for event_id in ids:
            if event_id and event_id in known:
                raise EventIdTaken(record.metadata.session_id, event_id, known[event_id])
            inherited = lineage.inherited_sequence(record, event_id, self._state.find_sequence)
            if inherited is not None:
                raise EventIdTaken(record.metadata.session_id, event_id, inherited)

    def set_pinned(self, session_id: str, pinned: bool) -> SessionRecord:
        record = self._state.record(session_id)
        if record is None:
            raise SessionNotFound(session_id)
        record.metadata.pinned = pinned
        self._save(record, records.recency_key(record.metadata))
        return record

    def purge_deleted(self, limit: int) -> int:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        purging = self._state.purging
        removed = 0
        for log_number in sorted(purging):
            events = purging[log_number]
            gone = events[: limit - removed]
            del events[: len(gone)]
            self._undo.append(functools.partial(_put_back, events, gone))
            removed += len(gone)
            if not events:
                del purging[log_number]
                self._undo.append(functools.partial(purging.__setitem__, log_number, events))
            if removed >= limit:
                break
        return removed

    # Journaled primitives

    def _take_log_number(self) -> int:
        state = self._state
        number = state.next_log_number
        state.next_log_number += 1
        self._undo.append(lambda: setattr(state, "next_log_number", number))
        return number

    def _new_log(self, log_number: int, base: int = 0) -> None:
        logs, ids, bases = self._state.logs, self._state.ids, self._state.bases
        logs[log_number] = []
        ids[log_number] = {}
        bases[log_number] = base
        self._undo.append(lambda: logs.pop(log_number))
        self._undo.append(lambda: ids.pop(log_number))
        self._undo.append(lambda: bases.pop(log_number))

    def _extend_log(self, record: SessionRecord, events: list[SessionEvent]) -> None:
        """Append ``events`` and index their ids; ``EventIdTaken`` for an id the log holds."""
        log, ids = self._state.logs[record.log_number], self._state.ids[record.log_number]
        length = len(log)
        added: list[str] = []
        self._undo.append(lambda: log.__delitem__(slice(length, None)))
        self._undo.append(lambda: [ids.pop(event_id) for event_id in added])
        for event in events:
            if event.id:
                if event.id in ids:
                    raise EventIdTaken(record.metadata.session_id, event.id, ids[event.id])
                ids[event.id] = event.sequence
                added.append(event.id)
            log.append(event.SerializeToString())

    def _save(self, record: SessionRecord, old_recency_key: bytes | None) -> None:
        state = self._state
        session_id = record.metadata.session_id
        old = state.records.get(session_id)
        state.records[session_id] = record.SerializeToString()
        if old is None:
            self._undo.append(lambda: state.records.pop(session_id))
        else:
            self._undo.append(lambda: state.records.__setitem__(session_id, old))
        new_recency_key = records.recency_key(record.metadata)
        if old_recency_key != new_recency_key:
            if old_recency_key is not None:
                self._remove_recency(old_recency_key)
            self._add_recency(new_recency_key)
        self._set_open_turn(session_id, records.has_open_turn(record))

    def _add_recency(self, key: bytes) -> None:
        recency = self._state.recency
        bisect.insort(recency, key)
        self._undo.append(lambda: recency.remove(key))

    def _remove_recency(self, key: bytes) -> None:
        recency = self._state.recency
        recency.pop(bisect.bisect_left(recency, key))
        self._undo.append(lambda: bisect.insort(recency, key))

    def _set_open_turn(self, session_id: str, is_open: bool) -> None:
        turns = self._state.open_turns
        if is_open == (session_id in turns):
            return
        if is_open:
            turns.add(session_id)
            self._undo.append(lambda: turns.discard(session_id))
        else:
            turns.discard(session_id)
            self._undo.append(lambda: turns.add(session_id))


def _put_back(events: list[bytes], gone: list[bytes]) -> None:
    events[:0] = gone


def _restore(refs: dict[int, int], log_number: int, count: int | None) -> None:
    if count is None:
        refs.pop(log_number, None)
    else:
        refs[log_number] = count
