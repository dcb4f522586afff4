"""The PostgreSQL backend: ``PostgresStore``, its reads, and the batches it hands the writer.

The schema (tables, indexes, versioning, DSNs) is in ``postgres_schema``; the
operations of a write batch in ``postgres_writer``. Connections come from a
``psycopg_pool`` pool: reads take any; ``write_batch`` calls of this process
are serialised on a lock (as the LMDB backend's are), while the database's
row locks order them against other daemons on the same database.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool, PoolTimeout

from copilotd.redaction import REDACTOR
from copilotd.store import lineage, postgres_search, records
from copilotd.store.base import (
    DEFAULT_LEASE_SECONDS,
    BackupUnsupported,
    SessionEvent,
    SessionNotFound,
    SessionRecord,
    Store,
    StoreChange,
    StoreError,
    StoreFull,
    StoreWriter,
)
from copilotd.store.postgres_logs import FIND_EVENT as FIND_EVENT
from copilotd.store.postgres_logs import LogReader
from copilotd.store.postgres_logs import events_query as events_query
from copilotd.store.postgres_relay import PostgresRelay, parse_live
from copilotd.store.postgres_schema import (
    CHANNEL,
    LIVE_CHANNEL,
    SCHEMA,
    StoreUnreachable,
    describe_dsn,
    discard_staged,
    dsn_password,
    prepare_schema,
)
from copilotd.store.postgres_writer import MAX_BIGINT, PostgresWriter

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS: Final = 8
CONNECT_TIMEOUT_SECONDS: Final = 10.0
# A batch that lost a deadlock or a serialization race to another daemon
# wrote nothing and is run again (the contract allows re-running a batch).
RETRIED_ERRORS: Final = (errors.DeadlockDetected, errors.SerializationFailure)
MAX_ATTEMPTS: Final = 5
# The server's disk is full (53100).
FULL_ERRORS: Final = (errors.DiskFull,)

# The reads' queries, each a range scan of one index (tests/test_store_postgres.py
# EXPLAINs them at 100,000 sessions): listing walks sessions_recency backwards.
_LIST_KEYS: Final = f"SELECT modified_ns, session_id, metadata_bytes FROM {SCHEMA}.sessions"
_NEWEST_FIRST: Final = " ORDER BY modified_ns DESC, session_id DESC LIMIT %s"
LIST_FIRST_PAGE: Final = _LIST_KEYS + _NEWEST_FIRST
LIST_NEXT_PAGE: Final = _LIST_KEYS + " WHERE (modified_ns, session_id) < (%s, %s)" + _NEWEST_FIRST
# Sessions needing attention, less those under another daemon's live lease.
# (A subquery per session, by turn_leases' key: leases are never scanned.)
OPEN_TURNS: Final = (
    f"SELECT s.record FROM {SCHEMA}.sessions s WHERE s.needs_attention AND coalesce("
    f"(SELECT l.owner = %s OR l.expires_at <= now() FROM {SCHEMA}.turn_leases l"
    " WHERE l.session_id = s.session_id), true) ORDER BY s.session_id"
)
# How long the listener waits for a notification before checking it should stop.
LISTEN_POLL_SECONDS: Final = 0.5
RECONNECT_DELAY_SECONDS: Final = 1.0


def default_owner() -> str:
    """A lease owner unique to this process (a daemon passes a stable one: its host and
    data directory, so that after a restart it takes its own leases back at once)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class PostgresStore(Store):
    """A store in a PostgreSQL database; create it with ``PostgresStore.open``."""

    shared = True

    def __init__(
        self,
        pool: ConnectionPool[Any],
        where: str,
        *,
        dsn: str = "",
        lease_owner: str = "",
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self._pool = pool
        self.where = where
        self._dsn = dsn
        self.lease_owner = lease_owner or default_owner()
        self.lease_seconds = lease_seconds
        self._write_lock = threading.Lock()
        self._closed = False
        self._listener: _Listener | None = None
        self._relay = PostgresRelay(pool, self.lease_owner, lease_seconds)
        self.relay = self._relay

    @classmethod
    def open(
        cls,
        dsn: str,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        lease_owner: str = "",
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> PostgresStore:
        """Connect to the database ``dsn`` names, creating the schema if it has none.

        Raises ``StoreUnreachable`` when the server cannot be reached or
        refuses the login, ``StoreVersionError`` for a schema of a newer
        version and ``StoreCorrupt`` for a ``copilotd`` schema that is not a
        store; in those cases nothing was written. Messages name the server
        and database, never the password.
        """
        where = describe_dsn(dsn)
        lease_owner = lease_owner or default_owner()
        password = dsn_password(dsn)
        if password:
            REDACTOR.add(password)  # whatever quotes the DSN, the log will not show it
        try:
            # One connection first: its refusal says why at once (the pool
            # would retry until its timeout and only report that).
            with psycopg.connect(
                dsn, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_SECONDS)
            ) as connection:
                prepare_schema(connection, where)
                discarded = discard_staged(connection, lease_owner)
        except psycopg.OperationalError as error:
            raise _unreachable(where, error) from None
        if discarded:
            log.warning(
                "discarded %d import(s) that were cut short at %s; their events are purged",
                discarded,
                where,
            )
        pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_connections,
            open=False,
            timeout=CONNECT_TIMEOUT_SECONDS,
            name="copilotd-store",
            # Transactions are opened explicitly (``connection.transaction()``).
            kwargs={"autocommit": True},
        )
        try:
            pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        except PoolTimeout as error:
            pool.close()
            raise _unreachable(where, error) from None
        log.info("store: %s", where)
        return cls(pool, where, dsn=dsn, lease_owner=lease_owner, lease_seconds=lease_seconds)

    # Writes

    def write_batch(self, operations: Sequence[Callable[[StoreWriter], T]]) -> list[T | StoreError]:
        operations = list(operations)
        with self._write_lock:
            self._check_open()
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    return self._run_batch(operations)
                except RETRIED_ERRORS:
                    if attempt == MAX_ATTEMPTS:
                        raise
                    log.info("a write batch lost a race with another writer; running it again")
                except FULL_ERRORS as error:
                    raise StoreFull(
                        f"the database of the copilotd store at {self.where} has no space "
                        f"left ({error.diag.message_primary}); nothing was written. Free space "
                        "on the database server, or delete old sessions."
                    ) from error
            raise AssertionError("unreachable")

    def _run_batch(self, operations: list[Callable[[StoreWriter], T]]) -> list[T | StoreError]:
        with (
            self._relay.live_lock,
            self._pool.connection() as connection,
            connection.transaction(),
        ):
            # Live events published before this commit are delivered before it.
            self._relay.notify_live(connection)
            writer = PostgresWriter(connection, self.lease_owner, self.lease_seconds)
            return [writer.run(operation) for operation in operations]

    # Reads

    @contextmanager
    def _reading(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection in a read-only snapshot: the reads in it agree with each other."""
        self._check_open()
        with self._pool.connection() as connection, connection.transaction():
            connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield connection

    def get_session(self, session_id: str) -> SessionRecord | None:
        self._check_open()
        with self._pool.connection() as connection:
            return _record(connection, session_id)

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
        with self._reading() as connection:
            record = _record(connection, session_id)
            if record is None:
                raise SessionNotFound(session_id)
            if limit == 0:
                return []
            return lineage.read(
                record,
                LogReader(connection, bounded=max_bytes is not None),
                after=min(after, MAX_BIGINT),
                before=before,
                limit=limit,
                newest_first=newest_first,
                budget=budget,
            )

    def search_text(self, tsquery: str, **options: Any) -> list[postgres_search.Found]:
        """Full-text search in the database (``postgres_search.search``'s options)."""
        with self._reading() as connection:
            return postgres_search.search(connection, tsquery, **options)

    def rebuild_search(self) -> int:
        """Index every event for search afresh, in one transaction; the events read."""
        self._check_open()
        with self._write_lock, self._pool.connection() as connection, connection.transaction():
            return postgres_search.rebuild(connection)

    def find_event(self, session_id: str, event_id: str) -> SessionEvent | None:
        with self._reading() as connection:
            record = _record(connection, session_id)
            if record is None:
                raise SessionNotFound(session_id)
            reader = LogReader(connection, bounded=False)
            return lineage.find(record, event_id, reader.find_sequence, reader)

    def list_sessions(
        self, *, limit: int, page_token: str = "", max_bytes: int | None = None
    ) -> tuple[list[SessionRecord], str]:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        budget = records.ByteBudget(max_bytes)
        with self._reading() as connection:
            # One more than the page: whether it exists says if a token follows.
            if page_token:
                keys = connection.execute(
                    LIST_NEXT_PAGE, (*_token_position(page_token), limit + 1)
                ).fetchall()
            else:
                keys = connection.execute(LIST_FIRST_PAGE, (limit + 1,)).fetchall()
            page_keys = []
            for key in keys[:limit]:
                if not budget.take(key[2]):
                    break
                page_keys.append(key)
            more = len(page_keys) < len(keys)
            rows = connection.execute(
                f"SELECT session_id, record FROM {SCHEMA}.sessions WHERE session_id = ANY(%s)",
                ([key[1] for key in page_keys],),
            ).fetchall()
        by_id = {session_id: SessionRecord.FromString(raw) for session_id, raw in rows}
        page = [by_id[key[1]] for key in page_keys]
        if not more or not page:
            return page, ""
        last = page[-1].metadata
        return page, records.encode_page_token(records.recency_key(last))

    def sessions_with_open_turns(self) -> list[SessionRecord]:
        with self._reading() as connection:
            rows = connection.execute(OPEN_TURNS, (self.lease_owner,)).fetchall()
        return [SessionRecord.FromString(raw) for (raw,) in rows]

    def session_count(self) -> int:
        self._check_open()
        with self._pool.connection() as connection:
            row = connection.execute(
                f"SELECT value FROM {SCHEMA}.counters WHERE name = 'session_count'"
            ).fetchone()
        assert row is not None
        return int(row[0])

    def size_bytes(self) -> int:
        """The tables' and indexes' size on the server, TOAST included."""
        self._check_open()
        with self._pool.connection() as connection:
            row = connection.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind = 'r'",
                (SCHEMA,),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def copy_to(self, fd: int) -> None:
        raise BackupUnsupported(
            f"the copilotd store at {self.where} lives in PostgreSQL, whose own tools make "
            f"consistent backups: run pg_dump --schema={SCHEMA} on that database (or back up "
            "the whole server with pg_basebackup)"
        )

    def renew_leases(self) -> int:
        self._check_open()
        with self._pool.connection() as connection:
            return int(
                connection.execute(
                    f"UPDATE {SCHEMA}.turn_leases"
                    " SET expires_at = now() + make_interval(secs => %s) WHERE owner = %s",
                    (self.lease_seconds, self.lease_owner),
                ).rowcount
            )

    def watch(self, on_change: Callable[[StoreChange | None], None]) -> None:
        self._check_open()
        if self._listener is not None:
            raise RuntimeError("the store is watched already")
        self._listener = _Listener(self._dsn, self.lease_owner, on_change)
        self._listener.start()
        # Changes committed after ``watch`` returns are heard: it returns once LISTENing.
        if not self._listener.listening.wait(CONNECT_TIMEOUT_SECONDS):
            log.warning("store listener: not listening yet; changes are caught up later")

    def close(self) -> None:
        with self._write_lock:
            if not self._closed:
                self._closed = True
                if self._listener is not None:
                    self._listener.stop()
                self._relay.close()
                self._pool.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the store at {self.where} is closed")


class _Listener(threading.Thread):
    """LISTENs on a connection of its own and reports other daemons' changes.

    A notification lost while the connection was down is made up for by
    reporting ``None`` on reconnecting: the watcher re-reads what it follows.
    """

    def __init__(
        self, dsn: str, owner: str, on_change: Callable[[StoreChange | None], None]
    ) -> None:
        super().__init__(name="copilotd-store-listener", daemon=True)
        self._dsn = dsn
        self._owner = owner
        self._on_change = on_change
        self._stopping = threading.Event()
        self.listening = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.join()

    def run(self) -> None:
        connected_before = False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(
                    self._dsn, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_SECONDS)
                ) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    connection.execute(f"LISTEN {LIVE_CHANNEL}")
                    self.listening.set()
                    if connected_before:
                        self._on_change(None)
                    connected_before = True
                    while not self._stopping.is_set():
                        for notification in connection.notifies(timeout=LISTEN_POLL_SECONDS):
                            self._report(notification.channel, notification.payload)
            except psycopg.Error as error:
                log.warning("store listener: %s; reconnecting", str(error).strip())
                self._stopping.wait(RECONNECT_DELAY_SECONDS)

    def _report(self, channel: str, payload: str) -> None:
        if channel == LIVE_CHANNEL:
            session_id, last_sequence, owner, event = parse_live(payload)
            if owner != self._owner:
                self._on_change(StoreChange("live", session_id, last_sequence, event))
            return
        change = json.loads(payload)
        if change.get("t", self._owner) != self._owner:
            return  # a relayed request or answer for another daemon
        if change["o"] != self._owner or "t" in change:
            extra = json.dumps(change["a"]).encode() if "a" in change else b""
            self._on_change(StoreChange(change["k"], change["s"], int(change["q"]), extra))


def _record(connection: psycopg.Connection[Any], session_id: str) -> SessionRecord | None:
    row = connection.execute(
        f"SELECT record FROM {SCHEMA}.sessions WHERE session_id = %s", (session_id,)
    ).fetchone()
    return None if row is None else SessionRecord.FromString(row[0])


def _token_position(page_token: str) -> tuple[int, str]:
    """The (modified_ns, session_id) a page token stands for; ``ValueError`` if malformed."""
    key = records.decode_page_token(page_token)
    nanos = records.U64.unpack_from(key)[0]
    return min(nanos, MAX_BIGINT), key[records.U64.size :].decode("utf-8")


def _unreachable(where: str, error: Exception) -> StoreUnreachable:
    # libpq's own words (the first line) name the server and the user, never the password.
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    return StoreUnreachable(
        f"cannot connect to the copilotd store at {where}: {reason}. Check that the server "
        "runs and that the DSN's host, port, database, user and password are right."
    )
