"""Operations on a store for the storage tests, and the backends they run against.

``Backend`` gives a test class a fresh ``store`` per test; ``MemoryBackend``,
``LmdbBackend`` and ``PostgresBackend`` say how to open each kind. The contract suites
(``tests/test_store_contract.py``, ``tests/test_store_lifecycle.py``)
subclass one of them per backend.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import pytest

from copilotd.events import (
    ASSISTANT_MESSAGE,
    USER_MESSAGE,
    make_event,
)
from copilotd.store import (
    LmdbStore,
    MemoryStore,
    SessionEvent,
    SessionMetadata,
    SessionRecord,
    Store,
    StoreError,
    StoreWriter,
)
from copilotd.store.postgres_store import PostgresStore
from tests.support.postgres import PostgresCluster

KiB = 1024
T = TypeVar("T")

# Every event is stamped later than the one before, so listing order is known.
_ticks = itertools.count(1_700_000_000 * 10**9, 1_000)


def event(event_type: str = USER_MESSAGE, **payload: Any) -> SessionEvent:
    stamped = make_event(event_type, **payload)
    stamped.timestamp.FromNanoseconds(next(_ticks))
    return stamped


def user(content: str) -> SessionEvent:
    return event(USER_MESSAGE, content=content)


def reply(content: str) -> SessionEvent:
    return event(ASSISTANT_MESSAGE, content=content)


def run(store: Store, operation: Callable[[StoreWriter], T]) -> T:
    """Run one operation in its own batch, raising the StoreError it returned."""
    (result,) = store.write_batch([operation])
    if isinstance(result, StoreError):
        raise result
    return result


def creation(
    session: str | SessionMetadata, events: Iterable[SessionEvent] = ()
) -> Callable[[StoreWriter], tuple[SessionRecord, list[SessionEvent]]]:
    """Creating ``session`` (an id, or the whole metadata) with ``events``."""
    metadata = SessionMetadata(session_id=session) if isinstance(session, str) else session
    events = list(events)
    return lambda writer: writer.create_session(metadata, events)


def create(
    store: Store, session_id: str, events: Iterable[SessionEvent] = ()
) -> tuple[SessionRecord, list[SessionEvent]]:
    return run(store, creation(session_id, events))


def append(
    store: Store, session_id: str, events: Iterable[SessionEvent], **options: Any
) -> tuple[SessionRecord, list[SessionEvent]]:
    events = list(events)
    return run(store, lambda writer: writer.append_events(session_id, events, **options))


def delete(store: Store, session_id: str) -> None:
    run(store, lambda writer: writer.delete_session(session_id))


def purge(store: Store, limit: int) -> int:
    removed: int = run(store, lambda writer: writer.purge_deleted(limit))
    return removed


def record_of(store: Store, session_id: str) -> SessionRecord:
    record = store.get_session(session_id)
    assert record is not None, session_id
    return record


def all_events(store: Store, session_id: str) -> list[SessionEvent]:
    return store.read_events(session_id, limit=1_000_000)


def contents(events: Iterable[SessionEvent]) -> list[str]:
    return [e.user_message.content or e.assistant_message.content for e in events]


def listed_ids(records: Iterable[SessionRecord]) -> list[str]:
    return [record.metadata.session_id for record in records]


def walk(store: Store, page_size: int) -> list[list[SessionRecord]]:
    """Every page of the listing, following the tokens."""
    pages: list[list[SessionRecord]] = []
    token = ""
    for _ in range(10_000):
        page, token = store.list_sessions(limit=page_size, page_token=token)
        pages.append(page)
        if not token:
            return pages
    raise AssertionError("the listing never ended")


def numbered(n: int) -> str:
    """Content that says which event it is, so a reader can check what it got."""
    return f"{n:06d}" * 170


def check_prefix(events: list[SessionEvent]) -> None:
    for position, stored in enumerate(events, start=1):
        assert stored.sequence == position
        assert stored.user_message.content == numbered(position)


def read_while_writing(store: Store, batches: int, batch_size: int) -> list[int]:
    """Append numbered events while another thread reads them back; return what it saw.

    Every read must be a prefix of what was written (nothing uncommitted, nothing
    torn) and never shorter than the one before.
    """
    create(store, "s")
    first_read = threading.Event()
    stop = threading.Event()
    seen: list[int] = []
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                events = store.read_events("s", limit=1_000_000)
                check_prefix(events)
                assert not seen or len(events) >= seen[-1]
                seen.append(len(events))
                first_read.set()
        except BaseException as exc:
            failures.append(exc)
            first_read.set()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert first_read.wait(timeout=10)
        for batch in range(batches):
            first = batch * batch_size + 1
            append(store, "s", [user(numbered(n)) for n in range(first, first + batch_size)])
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert not failures, failures
    check_prefix(all_events(store, "s"))
    assert len(all_events(store, "s")) == batches * batch_size
    return seen


class Backend:
    """A backend under test; subclasses define ``make_store`` and ``open_copy``."""

    def make_store(self, tmp_path: Path) -> Store:
        raise NotImplementedError

    def open_copy(self, copy: Path) -> Store | None:
        """Open the file ``copy_to`` wrote; None for a backend without backups."""
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        store = self.make_store(tmp_path)
        yield store
        store.close()


class MemoryBackend(Backend):
    def make_store(self, tmp_path: Path) -> Store:
        return MemoryStore()

    def open_copy(self, copy: Path) -> Store | None:
        return None


class PostgresBackend(Backend):
    """A store in a database of its own on the test session's private server."""

    @pytest.fixture
    def store(self, postgres_cluster: PostgresCluster, postgres_database: str) -> Iterator[Store]:
        store = PostgresStore.open(postgres_cluster.dsn(postgres_database))
        yield store
        store.close()

    def open_copy(self, copy: Path) -> Store | None:
        return None  # its backups are the database's own (pg_dump)


class LmdbBackend(Backend):
    def make_store(self, tmp_path: Path) -> Store:
        return LmdbStore.open(tmp_path / "store")

    def open_copy(self, copy: Path) -> Store | None:
        return LmdbStore.open(copy.parent)


def event_entries(path: Path, table: bytes = b"events") -> int:
    """Entries in one of the store's tables (events by default), read from the files directly."""
    env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return int(txn.stat(env.open_db(table, txn=txn, create=False))["entries"])
    finally:
        env.close()
