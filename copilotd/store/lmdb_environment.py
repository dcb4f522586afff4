"""The LMDB backend's environment: its tables, opening it, its map and its errors.

One environment, eight named tables, durable commits.

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
* ``event_ids``: log number (8 bytes) + event id (UTF-8) -> sequence (8
  bytes): each log's event ids, so a message id sent again is found in one
  lookup (schema version 2; built when a version 1 store is opened).
* ``staging``: log number (8 bytes) -> ``SessionRecord``, imports being
  written (their events are in ``events`` under that log number); left over
  after a crash, they are moved to ``purge`` when the store opens.
* ``sys``: ``schema_version`` (ASCII int) and ``next_log_number`` (8 bytes).

LMDB's map is a fixed-size window onto the file; it is grown on demand.
Growing it requires that no transaction is open in this process, which is
what ``ResizeGate`` is for. Reads live in ``lmdb_store``, writes in
``lmdb_writer``.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import lmdb

from copilotd.store.base import (
    SCHEMA_VERSION,
    SessionEvent,
    SessionRecord,
    StoreCorrupt,
    StoreFull,
    StoreVersionError,
)
from copilotd.store.records import U64, session_key

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
UNCOUNTED_PAGES: Final = 3

SCHEMA_VERSION_KEY: Final = b"schema_version"
NEXT_LOG_NUMBER_KEY: Final = b"next_log_number"
# "purge" came after schema version 1's first release, "event_ids" and
# "staging" with version 2, "log_refs" (log number -> how many sessions read
# the log, when forks share it) with version 3; opening creates them.
TABLE_NAMES: Final = (
    b"meta",
    b"events",
    b"recency",
    b"open_turns",
    b"sys",
    b"purge",
    b"event_ids",
    b"staging",
    b"log_refs",
)
# Events indexed per transaction while a version 1 store is migrated, so that
# the migration of a large store never needs one huge transaction.
MIGRATION_STEP: Final = 10_000
# LMDB's own ways of saying "this is not (or no longer) a valid environment".
CORRUPTION_ERRORS: Final = (
    lmdb.InvalidError,
    lmdb.CorruptedError,
    lmdb.VersionMismatchError,
    lmdb.PageNotFoundError,
    lmdb.IncompatibleError,
    lmdb.BadChecksumError,
)


@dataclass(frozen=True)
class Tables:
    meta: lmdb._Database
    events: lmdb._Database
    recency: lmdb._Database
    open_turns: lmdb._Database
    sys: lmdb._Database
    purge: lmdb._Database
    event_ids: lmdb._Database
    staging: lmdb._Database
    log_refs: lmdb._Database

    def all(self) -> tuple[lmdb._Database, ...]:
        return (
            self.meta,
            self.events,
            self.recency,
            self.open_turns,
            self.sys,
            self.event_ids,
            self.staging,
            self.log_refs,
        )


class ResizeGate:
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


def reserve_for(cap: int) -> int:
    """Bytes of a size cap kept for deletions and turn ends."""
    return max(MIN_RESERVE, min(MAX_RESERVE, cap // RESERVE_SHARE))


def map_sizes(initial_map_size: int, max_map_size: int | None) -> tuple[int | None, int]:
    """(cap, initial) in whole OS pages, the initial size within the cap."""
    page = mmap.PAGESIZE
    initial = -(-max(initial_map_size, MIN_MAP_SIZE) // page) * page
    if max_map_size is None:
        return None, initial
    if max_map_size < MIN_MAP_SIZE + MIN_RESERVE:
        raise ValueError(f"max_map_size must be at least {MIN_MAP_SIZE + MIN_RESERVE} bytes")
    cap = max_map_size // page * page
    return cap, min(initial, cap)


def check_not_truncated(env: lmdb.Environment, path: Path) -> None:
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


def read_schema_version(env: lmdb.Environment, path: Path) -> int | None:
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
        raw = txn.get(SCHEMA_VERSION_KEY, db=sys_table)
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


def open_tables(env: lmdb.Environment, *, initialize: bool) -> Tables:
    with env.begin(write=True) as txn:
        tables = Tables(*(env.open_db(name, txn=txn) for name in TABLE_NAMES))
        if initialize:
            txn.put(SCHEMA_VERSION_KEY, str(SCHEMA_VERSION).encode("ascii"), db=tables.sys)
            txn.put(NEXT_LOG_NUMBER_KEY, U64.pack(1), db=tables.sys)
    return tables


def migrate(env: lmdb.Environment, tables: Tables, version: int) -> None:
    """Bring a store of an older schema ``version`` up to ``SCHEMA_VERSION``.

    Version 1 has no ``event_ids``: they are indexed in steps of
    ``MIGRATION_STEP`` events, and the version is written with the last
    step, so a migration cut short starts again at the next open (indexing
    an id twice writes the same entry). Version 2 has no ``log_refs``:
    opening created it, empty, which is right for a store without forks.
    """
    if version >= SCHEMA_VERSION:
        return
    if version >= 2:
        with env.begin(write=True) as txn:
            txn.put(SCHEMA_VERSION_KEY, str(SCHEMA_VERSION).encode("ascii"), db=tables.sys)
        return
    session_key_from = b""
    after = 0
    while True:
        try:
            with env.begin(write=True) as txn:
                position = _index_event_ids(txn, tables, session_key_from, after)
                if position is None:
                    txn.put(SCHEMA_VERSION_KEY, str(SCHEMA_VERSION).encode("ascii"), db=tables.sys)
        except lmdb.MapFullError:
            env.set_mapsize(int(env.info()["map_size"]) * 2)
            continue
        if position is None:
            return
        session_key_from, after = position


def _index_event_ids(
    txn: lmdb.Transaction[bytes], tables: Tables, session_key_from: bytes, after: int
) -> tuple[bytes, int] | None:
    """Index up to ``MIGRATION_STEP`` events from that session's event ``after`` on.

    Returns where to go on, or None once every session's events are indexed.
    """
    indexed = 0
    with (
        txn.cursor(db=tables.meta) as sessions,
        txn.cursor(db=tables.events) as events,
    ):
        positioned = sessions.set_range(session_key_from) if session_key_from else sessions.first()
        while positioned:
            key, raw = sessions.item()
            log_number = SessionRecord.FromString(raw).log_number
            prefix = U64.pack(log_number)
            at_event = events.set_range(prefix + U64.pack(after + 1))
            while at_event and events.key()[: U64.size] == prefix:
                if indexed == MIGRATION_STEP:
                    return bytes(key), U64.unpack_from(events.key(), U64.size)[0] - 1
                event = SessionEvent.FromString(events.value())
                if event.id:
                    txn.put(
                        prefix + event.id.encode("utf-8"),
                        U64.pack(event.sequence),
                        db=tables.event_ids,
                    )
                indexed += 1
                at_event = events.next()
            after = 0
            positioned = sessions.next()
    return None


def discard_staged(env: lmdb.Environment, tables: Tables) -> int:
    """Hand imports that a crash left half written to the purge; returns how many."""
    with env.begin(write=True) as txn, txn.cursor(db=tables.staging) as staged:
        numbers = list(staged.iternext(values=False))
        for number in numbers:
            txn.put(number, b"", db=tables.purge)
            txn.delete(number, db=tables.staging)
    return len(numbers)


def corrupt_error(path: Path, exc: lmdb.Error) -> StoreCorrupt:
    return StoreCorrupt(
        f"the copilotd store at {path} cannot be read ({exc}); it is not an LMDB "
        "environment or it is damaged. It was left untouched: restore it from a backup "
        "or move it aside."
    )


def disk_full_error(path: Path) -> StoreFull:
    return StoreFull(
        f"no space left on the disk of the copilotd store at {path}; nothing was written. "
        "Free some disk space and retry."
    )


def is_disk_full(exc: lmdb.Error, path: Path) -> bool:
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


def load_record(
    txn: lmdb.Transaction[bytes], tables: Tables, session_id: str
) -> SessionRecord | None:
    if not session_id:  # LMDB refuses empty keys; no session can have this id anyway
        return None
    raw = txn.get(session_key(session_id), db=tables.meta)
    return None if raw is None else SessionRecord.FromString(raw)
