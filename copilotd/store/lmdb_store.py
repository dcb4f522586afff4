"""The LMDB backend: one environment, five named tables, durable commits.

Tables (keys sort as unsigned bytes, so fixed-width big-endian numbers sort
numerically):

* ``meta``: session id (UTF-8) -> ``SessionRecord``.
* ``events``: log number (8 bytes) + sequence (8 bytes) -> ``SessionEvent``.
  A session's log number is never reused, so a re-created session cannot
  see a deleted one's events.
* ``recency``: modified time in ns (8 bytes) + session id -> b"", read
  backwards for newest-first listing.
* ``open_turns``: session id -> b"", the sessions with a turn in progress.
* ``purge``: log number (8 bytes) -> b"", deleted sessions whose events are
  still to be removed (``purge_deleted``).
* ``sys``: ``schema_version`` (ASCII int) and ``next_log_number`` (8 bytes).

LMDB's map is a fixed-size window onto the file; it is grown on demand.
Growing it requires that no transaction is open in this process, which is
what ``_Gate`` is for.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import lmdb

from copilotd.store import records
from copilotd.store.base import (
    SCHEMA_VERSION,
    PendingMessage,
    SessionEvent,
    SessionExists,
    SessionMetadata,
    SessionNotFound,
    SessionRecord,
    Store,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreVersionError,
    StoreWriter,
)
from copilotd.store.records import U64, event_key, recency_key, session_key

T = TypeVar("T")

log = logging.getLogger(__name__)

MiB: Final = 1 << 20
DEFAULT_INITIAL_MAP_SIZE: Final = 64 * MiB
# Below this even creating the tables may not fit.
MIN_MAP_SIZE: Final = 64 * 1024
# Under a size cap, this share of the cap (within bounds) is kept for the
# writes that free space or close what is open: deleting a session, ending a
# turn, starting a queued message (which moves text already stored). LMDB
# writes copy-on-write, so even a delete needs free pages; without a reserve a
# store filled to its cap could not be emptied.
RESERVE_SHARE: Final = 8
MIN_RESERVE: Final = 64 * 1024
MAX_RESERVE: Final = 64 * MiB
# Free space below which an I/O error on commit is taken for a full disk.
DISK_NEARLY_FULL: Final = 1 * MiB
# The main table and the two meta pages, which ``txn.stat`` of the tables omits.
_UNCOUNTED_PAGES: Final = 3

_SCHEMA_VERSION_KEY: Final = b"schema_version"
_NEXT_LOG_NUMBER_KEY: Final = b"next_log_number"
# "purge" came after schema version 1's first release; opening creates it.
_TABLES: Final = (b"meta", b"events", b"recency", b"open_turns", b"sys", b"purge")
# LMDB's own ways of saying "this is not (or no longer) a valid environment".
_CORRUPTION_ERRORS: Final = (
    lmdb.InvalidError,
    lmdb.CorruptedError,
    lmdb.VersionMismatchError,
    lmdb.PageNotFoundError,
    lmdb.IncompatibleError,
    lmdb.BadChecksumError,
)


@dataclass(frozen=True)
class _Tables:
    meta: lmdb._Database
    events: lmdb._Database
    recency: lmdb._Database
    open_turns: lmdb._Database
    sys: lmdb._Database
    purge: lmdb._Database

    def all(self) -> tuple[lmdb._Database, ...]:
        return (self.meta, self.events, self.recency, self.open_turns, self.sys)


class _Gate:
    """Readers share it; a map resize has it alone.

    ``set_mapsize`` invalidates every transaction open in this process, so a
    resize waits for the readers in flight to finish and holds new ones back
    (a pending resize wins, so a steady stream of reads cannot starve it).
    The read path costs two uncontended lock round trips.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._exclusive and not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class LmdbStore(Store):
    """A store in one LMDB environment; create it with ``LmdbStore.open``."""

    def __init__(
        self, env: lmdb.Environment, tables: _Tables, path: Path, max_map_size: int | None
    ) -> None:
        self._env = env
        self._tables = tables
        self._path = path
        self._max_map_size = max_map_size
        # Ordinary writes stop here; the rest of the cap is the reserve.
        self._soft_limit = (
            None if max_map_size is None else max_map_size - reserve_for(max_map_size)
        )
        self._page_size = int(env.stat()["psize"])
        self._write_lock = threading.Lock()
        self._gate = _Gate()
        self._closed = False

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        initial_map_size: int = DEFAULT_INITIAL_MAP_SIZE,
        max_map_size: int | None = None,
    ) -> LmdbStore:
        """Open (or create) the store in directory ``path``.

        Args:
            path: the environment's directory; created private (0700) if missing.
            initial_map_size: the map to start with; the store doubles it
                whenever a write needs more room.
            max_map_size: a cap on that growth (``None``: the disk is the
                limit); beyond it writes raise ``StoreFull``.

        Raises ``StoreVersionError`` for a store of a newer schema and
        ``StoreCorrupt`` for files that are not a copilotd store; in both cases
        the files are left as they were.
        """
        path = Path(path)
        cap, initial = _map_sizes(initial_map_size, max_map_size)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            env = lmdb.open(
                str(path),
                map_size=initial,
                max_dbs=len(_TABLES),
                mode=0o700,
                sync=True,
                metasync=True,
                lock=True,
                # Reads are point lookups and short range scans. With the OS's
                # readahead, each fault also pulled in neighbouring pages (other
                # sessions' events), which the kernel then mapped into the
                # daemon: a full listing of 100,000 sessions left ~380 MB
                # resident instead of ~60 MB.
                readahead=False,
            )
        except _CORRUPTION_ERRORS as exc:
            raise _corrupt(path, exc) from exc
        try:
            _check_not_truncated(env, path)
            version = _read_schema_version(env, path)
            tables = _open_tables(env, initialize=version is None)
        except BaseException as exc:
            env.close()
            if isinstance(exc, _CORRUPTION_ERRORS):
                raise _corrupt(path, exc) from exc
            if isinstance(exc, lmdb.Error) and _is_disk_full(exc, path):
                raise _disk_full(path) from exc
            raise
        return cls(env, tables, path, cap)

    @property
    def map_size(self) -> int:
        """The current size of the map, in bytes (grows as the store fills)."""
        return int(self._env.info()["map_size"])

    # Writes

    def write_batch(self, operations: Sequence[Callable[[StoreWriter], T]]) -> list[T | StoreError]:
        operations = list(operations)
        with self._write_lock:
            self._check_open()
            while True:
                try:
                    return self._run_batch(operations)
                except lmdb.MapFullError:
                    self._grow_map()

    def _run_batch(self, operations: list[Callable[[StoreWriter], T]]) -> list[T | StoreError]:
        txn = self._env.begin(write=True)
        try:
            writer = _LmdbWriter(self._env, self._tables, txn, self._space_check())
            results = [writer.run(operation) for operation in operations]
            self._commit(txn)
        except lmdb.Error as exc:
            txn.abort()
            if _is_disk_full(exc, self._path):
                raise _disk_full(self._path) from exc
            raise
        except BaseException:
            txn.abort()
            raise
        return results

    def _space_check(self) -> Callable[[lmdb.Transaction[bytes]], StoreFull | None] | None:
        """Under a cap: a check, run after each ordinary operation, that it left the reserve."""
        limit, cap = self._soft_limit, self._max_map_size
        if limit is None or cap is None:
            return None
        tables, page_size, path = self._tables, self._page_size, self._path

        def check(txn: lmdb.Transaction[bytes]) -> StoreFull | None:
            pages = _UNCOUNTED_PAGES + sum(
                stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
                for stat in (txn.stat(table) for table in tables.all())
            )
            if pages * page_size <= limit:
                return None
            return StoreFull(
                f"the copilotd store at {path} reached its size cap of {cap} bytes "
                f"({cap - limit} of them kept for deletions and turn ends); nothing was "
                "written. Delete old sessions or raise the cap (max_map_size)."
            )

        return check

    @staticmethod
    def _commit(txn: lmdb.Transaction[bytes]) -> None:
        """Durably commit ``txn`` (a seam for tests that simulate a full disk)."""
        txn.commit()

    def _grow_map(self) -> None:
        current = self.map_size
        cap = self._max_map_size
        if cap is not None and current >= cap:
            raise StoreFull(
                f"the copilotd store at {self._path} reached its size cap of {cap} bytes; "
                "nothing was written. Raise the cap (max_map_size) or delete old sessions."
            )
        new_size = current * 2 if cap is None else min(current * 2, cap)
        with self._gate.exclusive():
            self._env.set_mapsize(new_size)
        log.info("grew the store map at %s from %d to %d bytes", self._path, current, new_size)

    # Reads

    @contextmanager
    def _reading(self) -> Iterator[lmdb.Transaction[bytes]]:
        with self._gate.shared():
            self._check_open()
            txn = self._env.begin()
            try:
                yield txn
            finally:
                txn.abort()

    def get_session(self, session_id: str) -> SessionRecord | None:
        with self._reading() as txn:
            return _load_record(txn, self._tables, session_id)

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
        _check_window(after, before, limit)
        budget = records.ByteBudget(max_bytes)
        with self._reading() as txn:
            record = _load_record(txn, self._tables, session_id)
            if record is None:
                raise SessionNotFound(session_id)
            if before is None:
                before = record.metadata.last_sequence + 1
            with txn.cursor(db=self._tables.events) as cursor:
                scan = _scan_backward if newest_first else _scan_forward
                return scan(cursor, record.log_number, after, before, limit, budget)

    def list_sessions(
        self, *, limit: int, page_token: str = "", max_bytes: int | None = None
    ) -> tuple[list[SessionRecord], str]:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        start = records.decode_page_token(page_token) if page_token else None
        budget = records.ByteBudget(max_bytes)
        with self._reading() as txn, txn.cursor(db=self._tables.recency) as cursor:
            positioned = cursor.last() if start is None else _seek_below(cursor, start)
            page: list[SessionRecord] = []
            last_key = b""
            while positioned and len(page) < limit:
                key = cursor.key()
                record = self._indexed_record(txn, key[U64.size :])
                if not budget.take(record.metadata.ByteSize()):
                    break
                page.append(record)
                last_key = key
                positioned = cursor.prev()
            return page, records.encode_page_token(last_key) if positioned else ""

    def sessions_with_open_turns(self) -> list[SessionRecord]:
        with self._reading() as txn, txn.cursor(db=self._tables.open_turns) as cursor:
            return [self._indexed_record(txn, key) for key in cursor.iternext(values=False)]

    def _indexed_record(self, txn: lmdb.Transaction[bytes], key: bytes) -> SessionRecord:
        raw = txn.get(key, db=self._tables.meta)
        if raw is None:
            raise StoreCorrupt(
                f"the copilotd store at {self._path} indexes session {key!r} but has no record"
            )
        return SessionRecord.FromString(raw)

    def session_count(self) -> int:
        with self._reading() as txn:
            return int(txn.stat(self._tables.meta)["entries"])

    def size_bytes(self) -> int:
        """Pages up to the last one in use: freed pages inside count, the map's tail does not."""
        with self._gate.shared():
            self._check_open()
            last_page = int(self._env.info()["last_pgno"])
            return (last_page + 1) * int(self._env.stat()["psize"])

    def copy_to(self, fd: int) -> None:
        """LMDB's own hot copy, compacted (free pages left out), from one read snapshot.

        It holds the resize gate for its whole duration: a write that needs a
        larger map waits until the copy is done (writes that fit go on).
        """
        with self._gate.shared():
            self._check_open()
            self._env.copyfd(fd, compact=True)

    def close(self) -> None:
        with self._write_lock, self._gate.exclusive():
            if not self._closed:
                self._closed = True
                self._env.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the store at {self._path} is closed")


class _LmdbWriter(StoreWriter):
    """Runs each operation in its own child transaction of the batch's.

    Under a size cap, ``space_check`` runs after each operation that may not
    use the reserve; when it reports the store full, that operation is undone
    and gets the ``StoreFull`` error, and the batch goes on.
    """

    def __init__(
        self,
        env: lmdb.Environment,
        tables: _Tables,
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
        self._put_events(record.log_number, stored)
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
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        # Ending a turn, and starting a queued message (its text is already
        # stored in the queue), may use the reserve: neither may be refused
        # for lack of space without leaving a half turn or dropping a message.
        self._may_use_reserve = close_turn or (open_turn is not None and pending is not None)
        record = _load_record(self._txn, self._tables, session_id)
        if record is None:
            raise SessionNotFound(session_id)
        records.check_expected_sequence(record, expected_last_sequence)
        old_recency_key = recency_key(record.metadata)
        stored = records.append_to_record(record, events)
        records.update_turn(record, open_turn, close_turn)
        records.update_pending(record, pending)
        self._put_events(record.log_number, stored)
        self._save(record, old_recency_key)
        return record, stored

    def delete_session(self, session_id: str) -> None:
        self._may_use_reserve = True
        record = _load_record(self._txn, self._tables, session_id)
        if record is None:
            raise SessionNotFound(session_id)
        key = session_key(session_id)
        self._txn.delete(key, db=self._tables.meta)
        self._txn.delete(key, db=self._tables.open_turns)
        self._txn.delete(recency_key(record.metadata), db=self._tables.recency)
        # Unreachable from now on: log numbers are never reused.
        self._txn.put(U64.pack(record.log_number), b"", db=self._tables.purge)

    def purge_deleted(self, limit: int) -> int:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        removed = 0
        with (
            self._txn.cursor(db=self._tables.purge) as pending,
            self._txn.cursor(db=self._tables.events) as events,
        ):
            while removed < limit and pending.first():
                prefix = pending.key()
                events.set_range(prefix)
                while removed < limit and events.key()[: U64.size] == prefix:
                    events.delete()
                    removed += 1
                if events.key()[: U64.size] != prefix:
                    pending.delete()
        return removed

    def set_pinned(self, session_id: str, pinned: bool) -> SessionRecord:
        record = _load_record(self._txn, self._tables, session_id)
        if record is None:
            raise SessionNotFound(session_id)
        record.metadata.pinned = pinned
        self._save(record, recency_key(record.metadata))
        return record

    def _take_log_number(self) -> int:
        raw = self._txn.get(_NEXT_LOG_NUMBER_KEY, db=self._tables.sys)
        if raw is None:
            raise RuntimeError("the store's sys table has no next_log_number")
        (number,) = U64.unpack(raw)
        self._txn.put(_NEXT_LOG_NUMBER_KEY, U64.pack(number + 1), db=self._tables.sys)
        return int(number)

    def _put_events(self, log_number: int, events: list[SessionEvent]) -> None:
        for event in events:
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


# Opening


def reserve_for(cap: int) -> int:
    """Bytes of a size cap kept for deletions and turn ends."""
    return max(MIN_RESERVE, min(MAX_RESERVE, cap // RESERVE_SHARE))


def _map_sizes(initial_map_size: int, max_map_size: int | None) -> tuple[int | None, int]:
    """(cap, initial) in whole OS pages, the initial size within the cap."""
    page = mmap.PAGESIZE
    initial = -(-max(initial_map_size, MIN_MAP_SIZE) // page) * page
    if max_map_size is None:
        return None, initial
    if max_map_size < MIN_MAP_SIZE + MIN_RESERVE:
        raise ValueError(f"max_map_size must be at least {MIN_MAP_SIZE + MIN_RESERVE} bytes")
    cap = max_map_size // page * page
    return cap, min(initial, cap)


def _check_not_truncated(env: lmdb.Environment, path: Path) -> None:
    """Refuse a data file shorter than the pages its header says are in use.

    Reading a page past the end of a memory-mapped file kills the process
    with SIGBUS; a truncated store (a failed copy, a full disk during a
    restore) must be refused before any page is read.
    """
    used = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
    size = (path / "data.mdb").stat().st_size
    if size < used:
        raise StoreCorrupt(
            f"the copilotd store at {path} is truncated: its data file has {size} bytes but "
            f"its header says {used} are in use. It was left untouched: restore it from a "
            "backup or move it aside."
        )


def _read_schema_version(env: lmdb.Environment, path: Path) -> int | None:
    """The store's schema version (None: a new, empty environment).

    Read-only, so that a store this code must refuse is left untouched.
    """
    with env.begin() as txn:
        try:
            sys_table = env.open_db(b"sys", txn=txn, create=False)
        except lmdb.NotFoundError:
            if txn.stat()["entries"]:
                raise StoreCorrupt(
                    f"{path} holds an LMDB environment that is not a copilotd store; "
                    "refusing to use it. Point copilotd at another directory."
                ) from None
            return None
        raw = txn.get(_SCHEMA_VERSION_KEY, db=sys_table)
    version = _parse_version(raw)
    if version is None:
        raise StoreCorrupt(
            f"the copilotd store at {path} has an unreadable schema version {raw!r}; "
            "it may be damaged. Restore it from a backup or move it aside."
        )
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"the copilotd store at {path} has schema version {version}, but this copilotd "
            f"supports version {SCHEMA_VERSION} at most. Upgrade copilotd to open it; "
            "the store was left untouched."
        )
    return version


def _parse_version(raw: bytes | None) -> int | None:
    if raw is None or not raw.isdigit():
        return None
    version = int(raw)
    return version if version >= 1 else None


def _open_tables(env: lmdb.Environment, *, initialize: bool) -> _Tables:
    with env.begin(write=True) as txn:
        tables = _Tables(*(env.open_db(name, txn=txn) for name in _TABLES))
        if initialize:
            txn.put(_SCHEMA_VERSION_KEY, str(SCHEMA_VERSION).encode("ascii"), db=tables.sys)
            txn.put(_NEXT_LOG_NUMBER_KEY, U64.pack(1), db=tables.sys)
    return tables


def _corrupt(path: Path, exc: lmdb.Error) -> StoreCorrupt:
    return StoreCorrupt(
        f"the copilotd store at {path} cannot be read ({exc}); it is not an LMDB "
        "environment or it is damaged. It was left untouched: restore it from a backup "
        "or move it aside."
    )


def _disk_full(path: Path) -> StoreFull:
    return StoreFull(
        f"no space left on the disk of the copilotd store at {path}; nothing was written. "
        "Free some disk space and retry."
    )


def _is_disk_full(exc: lmdb.Error, path: Path) -> bool:
    if (
        isinstance(exc, lmdb.DiskError)
        or getattr(exc, "code", None) in (errno.ENOSPC, errno.EDQUOT)
        or "No space left" in str(exc)
    ):
        return True
    # LMDB reports a short write, which is what a full disk causes, as EIO.
    # py-lmdb gives no error code for it, only mdb_strerror's text.
    io_error = getattr(exc, "code", None) == errno.EIO or os.strerror(errno.EIO) in str(exc)
    return io_error and _free_disk_bytes(path) < DISK_NEARLY_FULL


def _free_disk_bytes(path: Path) -> int:
    try:
        info = os.statvfs(path)
    except OSError:
        return DISK_NEARLY_FULL
    return info.f_bavail * info.f_frsize


# Reading


def _load_record(
    txn: lmdb.Transaction[bytes], tables: _Tables, session_id: str
) -> SessionRecord | None:
    if not session_id:  # LMDB refuses empty keys; no session can have this id anyway
        return None
    raw = txn.get(session_key(session_id), db=tables.meta)
    return None if raw is None else SessionRecord.FromString(raw)


def _check_window(after: int, before: int | None, limit: int) -> None:
    if after < 0 or (before is not None and before < 0) or limit < 0:
        raise ValueError(f"bad event window: after={after}, before={before}, limit={limit}")


def _seek_below(cursor: lmdb.Cursor[bytes], key: bytes) -> bool:
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
    positioned = _seek_below(cursor, event_key(log_number, min(before, records.MAX_U64)))
    while positioned and len(events) < limit:
        key, value = cursor.item()
        if key[: U64.size] != prefix or U64.unpack_from(key, U64.size)[0] <= after:
            break
        if not budget.take(len(value)):
            break
        events.append(SessionEvent.FromString(value))
        positioned = cursor.prev()
    return events
