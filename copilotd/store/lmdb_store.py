"""The LMDB backend: ``LmdbStore``, its reads, and the batches it hands the writer.

The environment (tables, opening, map sizes, errors) is in ``lmdb_environment``;
the operations of a write batch in ``lmdb_writer``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import lmdb

from copilotd.store import lineage, records
from copilotd.store.base import (
    SCHEMA_VERSION,
    SessionEvent,
    SessionNotFound,
    SessionRecord,
    Store,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreWriter,
)
from copilotd.store.lmdb_environment import (
    CORRUPTION_ERRORS,
    DEFAULT_INITIAL_MAP_SIZE,
    TABLE_NAMES,
    UNCOUNTED_PAGES,
    ResizeGate,
    Tables,
    check_not_truncated,
    corrupt_error,
    discard_staged,
    disk_full_error,
    is_disk_full,
    load_record,
    map_sizes,
    migrate,
    open_tables,
    read_schema_version,
    reserve_for,
)
from copilotd.store.lmdb_logs import LogReader, seek_below
from copilotd.store.lmdb_writer import LmdbWriter
from copilotd.store.records import U64

T = TypeVar("T")

log = logging.getLogger(__name__)


class LmdbStore(Store):
    """A store in one LMDB environment; create it with ``LmdbStore.open``."""

    def __init__(
        self, env: lmdb.Environment, tables: Tables, path: Path, max_map_size: int | None
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
        self._gate = ResizeGate()
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
        cap, initial = map_sizes(initial_map_size, max_map_size)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            env = lmdb.open(
                str(path),
                map_size=initial,
                max_dbs=len(TABLE_NAMES),
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
        except CORRUPTION_ERRORS as exc:
            raise corrupt_error(path, exc) from exc
        try:
            check_not_truncated(env, path)
            version = read_schema_version(env, path)
            tables = open_tables(env, initialize=version is None)
            migrate(env, tables, version or SCHEMA_VERSION)
            if discarded := discard_staged(env, tables):
                log.warning(
                    "discarded %d import(s) that were cut short at %s; their events are purged",
                    discarded,
                    path,
                )
        except BaseException as exc:
            env.close()
            if isinstance(exc, CORRUPTION_ERRORS):
                raise corrupt_error(path, exc) from exc
            if isinstance(exc, lmdb.Error) and is_disk_full(exc, path):
                raise disk_full_error(path) from exc
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
            writer = LmdbWriter(self._env, self._tables, txn, self._space_check())
            results = [writer.run(operation) for operation in operations]
            self._commit(txn)
        except lmdb.Error as exc:
            txn.abort()
            if is_disk_full(exc, self._path):
                raise disk_full_error(self._path) from exc
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
            pages = UNCOUNTED_PAGES + sum(
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
                "nothing was written. Delete old sessions or raise the cap (max_map_size)."
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
            return load_record(txn, self._tables, session_id)

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
            record = load_record(txn, self._tables, session_id)
            if record is None:
                raise SessionNotFound(session_id)
            return lineage.read(
                record,
                LogReader(txn, self._tables),
                after=after,
                before=before,
                limit=limit,
                newest_first=newest_first,
                budget=budget,
            )

    def find_event(self, session_id: str, event_id: str) -> SessionEvent | None:
        with self._reading() as txn:
            record = load_record(txn, self._tables, session_id)
            if record is None:
                raise SessionNotFound(session_id)
            reader = LogReader(txn, self._tables)
            return lineage.find(record, event_id, reader.find_sequence, reader)

    def list_sessions(
        self, *, limit: int, page_token: str = "", max_bytes: int | None = None
    ) -> tuple[list[SessionRecord], str]:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        start = records.decode_page_token(page_token) if page_token else None
        budget = records.ByteBudget(max_bytes)
        with self._reading() as txn, txn.cursor(db=self._tables.recency) as cursor:
            positioned = cursor.last() if start is None else seek_below(cursor, start)
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


# Reading


def _check_window(after: int, before: int | None, limit: int) -> None:
    if after < 0 or (before is not None and before < 0) or limit < 0:
        raise ValueError(f"bad event window: after={after}, before={before}, limit={limit}")
