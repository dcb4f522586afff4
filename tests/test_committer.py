"""Group commit and background purging, on a real LMDB store in this process.

What the benchmark suite measures as "writes per commit" is checked here as
behaviour: concurrent writers share transactions, each returns only after
its own transaction is committed, a failing writer fails alone, and a deleted
session's events are purged in bounded steps that other writers interleave
with.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from copilot_client.proto.v1 import copilot_pb2
from copilotd.events import USER_MESSAGE, make_event
from copilotd.providers import ProviderRegistry
from copilotd.sessions.service import SessionService
from copilotd.store import LmdbStore, SessionMetadata, StoreError, StoreWriter
from copilotd.store import committer as committer_module
from copilotd.store.committer import GroupCommitter
from copilotd.store.purger import Purger

T = TypeVar("T")


class RecordingStore(LmdbStore):
    """An LMDB store that remembers each transaction's size and can hold one open."""

    attempts: list[int]
    batches: list[int]
    hold: threading.Event | None
    entered: threading.Event

    def write_batch(self, operations: Sequence[Callable[[StoreWriter], T]]) -> list[T | StoreError]:
        self.attempts.append(len(operations))
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(30)
        results = super().write_batch(operations)
        self.batches.append(len(operations))
        return results


def open_store(path: Path) -> RecordingStore:
    store = RecordingStore.open(path)
    assert isinstance(store, RecordingStore)
    store.attempts, store.batches, store.hold = [], [], None
    store.entered = threading.Event()
    return store


@pytest.fixture
async def committer(tmp_path: Path) -> AsyncIterator[GroupCommitter]:
    store = open_store(tmp_path / "store")
    committer = GroupCommitter(store)
    committer.start()
    yield committer
    await committer.close()
    store.close()


def store_of(committer: GroupCommitter) -> RecordingStore:
    store = committer._store
    assert isinstance(store, RecordingStore)
    return store


def creation(session_id: str, events: int = 1) -> Callable[[StoreWriter], Any]:
    stored = [make_event(USER_MESSAGE, content=f"{session_id} {n}") for n in range(events)]
    return lambda writer: writer.create_session(SessionMetadata(session_id=session_id), stored)


async def test_concurrent_writes_share_one_transaction(committer: GroupCommitter) -> None:
    results = await asyncio.gather(*(committer.submit(creation(f"s{n}")) for n in range(50)))

    assert [record.metadata.session_id for record, _ in results] == [f"s{n}" for n in range(50)]
    assert store_of(committer).batches == [50]
    assert (committer.operations_committed, committer.batches_committed) == (50, 1)
    assert committer.largest_batch == 50


async def test_writes_arriving_during_a_commit_share_the_next(committer: GroupCommitter) -> None:
    store = store_of(committer)
    store.hold = threading.Event()
    first = asyncio.ensure_future(committer.submit(creation("first")))
    await asyncio.to_thread(store.entered.wait, 30)  # its transaction is under way
    later = [asyncio.ensure_future(committer.submit(creation(f"s{n}"))) for n in range(20)]
    await asyncio.sleep(0)

    assert not first.done()  # nobody returns before its commit
    store.hold.set()
    await asyncio.gather(first, *later)
    assert store.batches == [1, 20]


async def test_each_writer_sees_its_data_committed(committer: GroupCommitter) -> None:
    store = store_of(committer)
    await asyncio.gather(*(committer.submit(creation(f"s{n}", events=3)) for n in range(10)))
    for n in range(10):
        events = store.read_events(f"s{n}", limit=10)
        assert [e.user_message.content for e in events] == [f"s{n} {i}" for i in range(3)]


async def test_a_store_error_fails_only_its_writer(committer: GroupCommitter) -> None:
    await committer.submit(creation("taken"))
    outcomes = await asyncio.gather(
        committer.submit(creation("a")),
        committer.submit(creation("taken")),
        committer.submit(creation("b")),
        return_exceptions=True,
    )
    assert [type(o).__name__ for o in outcomes] == ["tuple", "SessionExists", "tuple"]
    assert store_of(committer).get_session("b") is not None


async def test_a_writer_that_breaks_its_batch_fails_alone(committer: GroupCommitter) -> None:
    def broken(writer: StoreWriter) -> None:
        raise ZeroDivisionError("a bug in one writer")

    outcomes = await asyncio.gather(
        committer.submit(creation("a")),
        committer.submit(broken),
        committer.submit(creation("b")),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], ZeroDivisionError)
    assert not isinstance(outcomes[0], BaseException)
    assert not isinstance(outcomes[2], BaseException)
    store = store_of(committer)
    assert store.get_session("a") is not None and store.get_session("b") is not None
    # The shared attempt wrote nothing; then one transaction per writer.
    assert store.attempts == [3, 1, 1, 1]
    assert store.batches == [1, 1]


async def held_then(
    committer: GroupCommitter, queue: Callable[[], list[asyncio.Future[Any]]]
) -> list[int]:
    """Hold a first transaction open, queue more writes meanwhile, then release them all."""
    store = store_of(committer)
    store.hold = threading.Event()
    first = asyncio.ensure_future(committer.submit(creation("first")))
    await asyncio.to_thread(store.entered.wait, 30)
    queued = queue()
    await asyncio.sleep(0)
    store.hold.set()
    await asyncio.gather(first, *queued)
    return store.batches


def purge_step(writer: StoreWriter) -> int:
    return writer.purge_deleted(100)


async def test_background_work_waits_for_the_writes_waiting(committer: GroupCommitter) -> None:
    batches = await held_then(
        committer,
        lambda: [
            asyncio.ensure_future(committer.submit(purge_step, background=True)),
            *(asyncio.ensure_future(committer.submit(creation(f"s{n}"))) for n in range(3)),
        ],
    )
    assert batches == [1, 3, 1]  # the writes first, then the purge step alone


async def test_background_work_is_not_starved_by_constant_writes(
    committer: GroupCommitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer_module, "BACKGROUND_EVERY", 1)
    batches = await held_then(
        committer,
        lambda: [
            asyncio.ensure_future(committer.submit(purge_step, background=True)),
            *(asyncio.ensure_future(committer.submit(creation(f"s{n}"))) for n in range(3)),
        ],
    )
    assert batches == [1, 1, 3]


async def test_on_commit_runs_in_commit_order(committer: GroupCommitter) -> None:
    seen: list[str] = []

    def recording(name: str) -> Callable[[object], None]:
        return lambda _: seen.append(name)

    await asyncio.gather(
        *(committer.submit(creation(f"s{n}"), on_commit=recording(f"s{n}")) for n in range(10))
    )
    assert seen == [f"s{n}" for n in range(10)]


async def test_a_deleted_session_is_purged_in_steps_between_other_writes(
    committer: GroupCommitter,
) -> None:
    store = store_of(committer)
    await committer.submit(creation("long", events=1_000))
    await committer.submit(creation("other"))
    await committer.submit(lambda writer: writer.delete_session("long"))
    purger = Purger(committer, step_events=100)
    batches_before = len(store.batches)

    purger.kick()
    writes = [committer.submit(creation(f"during{n}")) for n in range(5)]
    await asyncio.gather(*writes)
    await purger.wait_idle()

    assert purger.events_purged == 1_000
    # One step per transaction: ten of 100 events, then one that finds none
    # left; the other writes went into those transactions or between them.
    assert len(store.batches) - batches_before >= 11
    assert committer.batches_committed == len(store.batches)
    assert all(store.get_session(f"during{n}") is not None for n in range(5))
    assert await committer.submit(lambda writer: writer.purge_deleted(100)) == 0


async def test_deleting_a_session_through_the_service_purges_its_events(tmp_path: Path) -> None:
    store = LmdbStore.open(tmp_path / "store")
    committer = GroupCommitter(store)
    committer.start()
    service = SessionService(store, committer, ProviderRegistry(), version="test")
    try:
        await service.create_session(copilot_pb2.SessionConfig(session_id="long"))
        history = [make_event(USER_MESSAGE, content=str(n)) for n in range(5_000)]
        await committer.submit(lambda writer: writer.append_events("long", history))

        await service.delete_session("long")
        await service.purger.wait_idle()

        assert service.purger.events_purged == 5_001  # the session.start too
        assert await committer.submit(lambda writer: writer.purge_deleted(1)) == 0
    finally:
        await service.shutdown()
        await committer.close()
        store.close()
