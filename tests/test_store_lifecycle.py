"""The storage contract's other half, run against every backend: deleting and
purging, listing, turns and counts, pinning, backups.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import threading
from pathlib import Path

import pytest

from copilotd.store import (
    BackupUnsupported,
    PendingMessage,
    SessionMetadata,
    SessionNotFound,
    SessionRecord,
    Store,
    StoreWriter,
)
from tests.support.store_ops import (
    Backend,
    KiB,
    LmdbBackend,
    MemoryBackend,
    PostgresBackend,
    all_events,
    append,
    check_prefix,
    contents,
    create,
    creation,
    delete,
    listed_ids,
    numbered,
    purge,
    record_of,
    reply,
    run,
    user,
    walk,
)


class LifecycleContract(Backend):
    """What happens to sessions over their life: every backend passes it unchanged."""

    # Deleting

    def test_delete_removes_everything(self, store: Store) -> None:
        create(store, "other", [user("o")])
        create(store, "s", [user("old"), reply("old answer")])
        append(store, "s", [user("q")], open_turn=("t1", "m1"))

        delete(store, "s")
        assert store.get_session("s") is None
        with pytest.raises(SessionNotFound):
            store.read_events("s", limit=10)
        assert listed_ids(store.list_sessions(limit=10)[0]) == ["other"]
        assert store.sessions_with_open_turns() == []
        assert store.session_count() == 1

        record, stored = create(store, "s", [user("new")])
        assert [(e.sequence, e.parent_id) for e in stored] == [(1, "")]
        assert contents(all_events(store, "s")) == ["new"]
        assert (record.metadata.message_count, record.metadata.summary) == (1, "new")
        assert not record.metadata.turn_running
        assert contents(all_events(store, "other")) == ["o"]

    def test_deleted_events_are_purged_in_bounded_steps(self, store: Store) -> None:
        create(store, "other", [user("o")])
        create(store, "long", [user(numbered(n)) for n in range(1, 251)])
        create(store, "short", [user("a"), user("b")])
        delete(store, "long")
        delete(store, "short")
        record, _ = create(store, "long", [user("new")])  # a new log, not the old one

        steps = [purge(store, 100) for _ in range(4)]
        assert steps == [100, 100, 52, 0]
        assert contents(all_events(store, "long")) == ["new"]
        assert contents(all_events(store, "other")) == ["o"]
        assert record.metadata.last_sequence == 1

    def test_purging_nothing(self, store: Store) -> None:
        create(store, "s", [user("kept")])
        assert purge(store, 10) == 0
        assert contents(all_events(store, "s")) == ["kept"]

    def test_a_purge_step_in_a_failed_batch_is_undone(self, store: Store) -> None:
        create(store, "s", [user(str(n)) for n in range(30)])
        delete(store, "s")

        class Boom(Exception):
            pass

        def boom(writer: StoreWriter) -> None:
            raise Boom

        with pytest.raises(Boom):
            store.write_batch([lambda writer: writer.purge_deleted(20), boom])
        assert [purge(store, 20), purge(store, 20)] == [20, 10]

    def test_purge_limit_must_be_positive(self, store: Store) -> None:
        with pytest.raises(ValueError):
            purge(store, 0)

    def test_delete_unknown_session(self, store: Store) -> None:
        with pytest.raises(SessionNotFound):
            delete(store, "nope")

    # Listing

    @pytest.mark.parametrize("page_size", [1, 7, 50, 249, 250, 1000])
    def test_listing_walks_every_session_once_newest_first(
        self, store: Store, page_size: int
    ) -> None:
        ids = [f"s{n:03d}" for n in range(250)]
        random.Random(page_size).shuffle(ids)
        store.write_batch([creation(session_id, [user(session_id)]) for session_id in ids])

        pages = walk(store, page_size)
        assert listed_ids(record for page in pages for record in page) == ids[::-1]
        assert len(pages) == math.ceil(250 / page_size)
        assert all(len(page) == page_size for page in pages[:-1])

    def test_append_moves_a_session_to_the_front(self, store: Store) -> None:
        for session_id in "abcd":
            create(store, session_id, [user(session_id)])
        append(store, "b", [reply("again")])
        assert listed_ids(store.list_sessions(limit=10)[0]) == ["b", "d", "c", "a"]
        assert listed_ids(r for page in walk(store, 1) for r in page) == ["b", "d", "c", "a"]

    def test_listing_ties_are_broken_by_session_id(self, store: Store) -> None:
        ids = ["m", "b", "x", "a", "q"]
        same_time = user("tie")
        store.write_batch([creation(session_id, [same_time]) for session_id in ids])
        for page_size in (1, 2, 5):
            records = [r for page in walk(store, page_size) for r in page]
            assert listed_ids(records) == sorted(ids, reverse=True)

    def test_listing_bounded_by_bytes_walks_every_session_once(self, store: Store) -> None:
        rng = random.Random(11)
        ids = [f"s{n:02d}" for n in range(40)]
        for session_id in ids:  # one by one: the listing order is the creation order
            metadata = SessionMetadata(session_id=session_id)
            metadata.system_message.content = "y" * rng.randrange(0, 3000)
            run(store, creation(metadata, [user("hi")]))
        budget = 6 * KiB
        pages: list[list[SessionRecord]] = []
        token = ""
        while True:
            page, token = store.list_sessions(limit=1000, page_token=token, max_bytes=budget)
            pages.append(page)
            assert page, "a page with a token after it is never empty"
            assert len(page) == 1 or sum(r.metadata.ByteSize() for r in page) <= budget
            if not token:
                break
        assert listed_ids(r for page in pages for r in page) == ids[::-1]
        assert len(pages) > 3
        # Each page stopped before the session that did not fit.
        for page, following in itertools.pairwise(pages):
            weight = sum(r.metadata.ByteSize() for r in page)
            assert weight + following[0].metadata.ByteSize() > budget
        # The first session is listed whatever its size; the count still bounds.
        assert len(store.list_sessions(limit=1000, max_bytes=1)[0]) == 1
        page, token = store.list_sessions(limit=2, max_bytes=1 << 30)
        assert listed_ids(page) == ids[:-3:-1] and token
        with pytest.raises(ValueError):
            store.list_sessions(limit=10, max_bytes=-1)

    def test_listing_an_empty_store(self, store: Store) -> None:
        assert store.list_sessions(limit=10) == ([], "")

    def test_walk_survives_deletion_of_the_token_session(self, store: Store) -> None:
        for session_id in "abcdef":
            create(store, session_id, [user(session_id)])
        page, token = store.list_sessions(limit=2)
        assert listed_ids(page) == ["f", "e"]
        delete(store, "e")
        page, token = store.list_sessions(limit=10, page_token=token)
        assert (listed_ids(page), token) == (["d", "c", "b", "a"], "")

    @pytest.mark.parametrize(
        "token", ["!!!", "AAAA", "not a token", "é", "AAAAAAAAAAD_", "AAAAAAAAAAA"]
    )
    def test_malformed_page_token(self, store: Store, token: str) -> None:
        create(store, "s")
        with pytest.raises(ValueError):
            store.list_sessions(limit=10, page_token=token)

    # Turns and counting

    def test_open_turns(self, store: Store) -> None:
        create(store, "a")
        create(store, "b")
        message = user("q")
        record, _ = append(store, "a", [message], open_turn=("t1", message.id))
        assert (record.open_turn_id, record.open_turn_user_message_id) == ("t1", message.id)
        assert record.metadata.turn_running
        assert store.get_session("a") == record
        assert listed_ids(store.sessions_with_open_turns()) == ["a"]

        record, _ = append(store, "a", [reply("r")], close_turn=True, open_turn=("t2", "m2"))
        assert record.open_turn_id == "t2"
        assert listed_ids(store.sessions_with_open_turns()) == ["a"]

        record, stored = append(store, "a", [], close_turn=True)
        assert stored == []
        assert (record.open_turn_id, record.metadata.turn_running) == ("", False)
        assert record.metadata.last_sequence == 2
        assert store.sessions_with_open_turns() == []

    def test_pending_queue(self, store: Store) -> None:
        create(store, "a")
        create(store, "b")
        queued = [
            PendingMessage(message_id="m1", content="first"),
            PendingMessage(message_id="m2", content="second"),
        ]
        record, stored = append(store, "a", [], pending=queued)
        assert stored == []
        assert [p.message_id for p in record.pending] == ["m1", "m2"]
        assert record.metadata.pending_messages == 2
        assert store.get_session("a") == record
        # Queued messages need attention at start-up even with no turn open.
        assert listed_ids(store.sessions_with_open_turns()) == ["a"]

        record, _ = append(store, "a", [user("x")])  # pending=None: unchanged
        assert [p.message_id for p in record.pending] == ["m1", "m2"]

        message = user("first")
        record, _ = append(store, "a", [message], open_turn=("t1", message.id), pending=queued[1:])
        assert [p.message_id for p in record.pending] == ["m2"]
        assert record.metadata.pending_messages == 1
        record, _ = append(store, "a", [], close_turn=True, pending=[])
        assert (list(record.pending), record.metadata.pending_messages) == ([], 0)
        assert store.sessions_with_open_turns() == []

    def test_session_count(self, store: Store) -> None:
        assert store.session_count() == 0
        for session_id in "abc":
            create(store, session_id)
        store.write_batch([creation("a")])
        assert store.session_count() == 3
        delete(store, "b")
        assert store.session_count() == 2

    def test_close_is_idempotent(self, store: Store) -> None:
        store.close()
        store.close()

    # Pinning

    def test_pinning_changes_only_the_pin(self, store: Store) -> None:
        create(store, "old", [user("o")])
        create(store, "new", [user("n")])
        before = record_of(store, "old")

        pinned = run(store, lambda writer: writer.set_pinned("old", True))
        assert pinned.metadata.pinned
        assert record_of(store, "old") == pinned
        unchanged = SessionRecord()
        unchanged.CopyFrom(pinned)
        unchanged.metadata.pinned = False
        assert unchanged == before
        assert listed_ids(store.list_sessions(limit=10)[0]) == ["new", "old"]

        # Appending keeps the pin; unpinning clears it.
        record, _ = append(store, "old", [user("again")])
        assert record.metadata.pinned
        assert not run(store, lambda writer: writer.set_pinned("old", False)).metadata.pinned
        with pytest.raises(SessionNotFound):
            run(store, lambda writer: writer.set_pinned("missing", True))

    def test_size_grows_with_data(self, store: Store) -> None:
        empty = store.size_bytes()
        create(store, "s", [user("x" * 100_000)])
        assert store.size_bytes() > empty

    # Backup

    def test_a_copy_holds_what_was_committed_before_it(self, store: Store, tmp_path: Path) -> None:
        create(store, "kept", [user("a"), reply("b")])
        append(store, "kept", [user("q")], open_turn=("t1", "m1"))
        copy = tmp_path / "copy" / "data.mdb"
        copy.parent.mkdir()
        with copy.open("wb") as handle:
            try:
                store.copy_to(handle.fileno())
            except BackupUnsupported:
                assert self.open_copy(copy) is None
                return
        create(store, "after", [user("later")])

        copied = self.open_copy(copy)
        assert copied is not None
        try:
            assert copied.get_session("kept") == record_of(store, "kept")
            assert all_events(copied, "kept") == all_events(store, "kept")
            assert copied.get_session("after") is None
            assert listed_ids(copied.sessions_with_open_turns()) == ["kept"]
            create(copied, "writable")  # a copy is a whole store, not a read-only dump
        finally:
            copied.close()

    def test_a_copy_taken_during_writes_is_a_committed_prefix(
        self, store: Store, tmp_path: Path
    ) -> None:
        create(store, "s")
        stop = threading.Event()
        flowing = threading.Event()
        written: list[int] = []

        def writer() -> None:
            while not stop.is_set() or len(written) < 50:
                position = len(written) + 1
                append(store, "s", [user(numbered(position))])
                written.append(position)
                if position == 20:
                    flowing.set()

        thread = threading.Thread(target=writer)
        thread.start()
        read_end, write_end = os.pipe()  # a pipe: the copy must never seek
        received = bytearray()
        try:
            flowing.wait()  # the copy starts with the writer in full flow
            copier = threading.Thread(target=_copy_and_close, args=(store, write_end))
            copier.start()
            while chunk := os.read(read_end, 1 << 16):
                received += chunk
            copier.join()
        finally:
            stop.set()
            thread.join()
            os.close(read_end)
        if not received:  # the backend has no backup (it raised in the thread)
            assert self.open_copy(tmp_path / "none") is None
            return
        copy = tmp_path / "copy" / "data.mdb"
        copy.parent.mkdir()
        copy.write_bytes(received)
        copied = self.open_copy(copy)
        assert copied is not None
        try:
            events = all_events(copied, "s")
            check_prefix(events)
            assert 20 <= len(events) <= len(written)
        finally:
            copied.close()


def _copy_and_close(store: Store, fd: int) -> None:
    try:
        store.copy_to(fd)
    except BackupUnsupported:
        pass
    finally:
        os.close(fd)


class TestMemoryStore(MemoryBackend, LifecycleContract):
    pass


class TestLmdbStore(LmdbBackend, LifecycleContract):
    pass


class TestPostgresStore(PostgresBackend, LifecycleContract):
    pass
