"""The storage contract suite (see ``copilotd/store/base.py``), run against every backend.

``StoreContract`` holds the contract; each backend subclasses it and only says
how to make a store. ``TestLmdbFiles`` covers what only a store on disk can
get wrong: reopening, versions, damaged files, growth and a full disk.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copilotd.events import (
    ASSISTANT_MESSAGE,
    ASSISTANT_MESSAGE_DELTA,
    ASSISTANT_TURN_END,
    SESSION_START,
    USER_MESSAGE,
    make_event,
    summarize,
)
from copilotd.store import (
    SCHEMA_VERSION,
    BackupUnsupported,
    EventIdTaken,
    LmdbStore,
    MemoryStore,
    PendingMessage,
    SequenceConflict,
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
    lmdb_environment,
    open_store,
)

KiB = 1024

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


def run(store: Store, operation: Callable[[StoreWriter], Any]) -> Any:
    """Run one operation in its own batch, raising the StoreError it returned."""
    (result,) = store.write_batch([operation])
    if isinstance(result, StoreError):
        raise result
    return result


def creation(
    session_id: str, events: Iterable[SessionEvent] = ()
) -> Callable[[StoreWriter], tuple[SessionRecord, list[SessionEvent]]]:
    events = list(events)
    return lambda writer: writer.create_session(SessionMetadata(session_id=session_id), events)


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


class StoreContract:
    """The contract every backend passes unchanged; subclasses define ``make_store``."""

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

    # Creating

    def test_create_then_get(self, store: Store) -> None:
        record, stored = create(store, "s1", [event(SESSION_START, session_id="s1"), user("hi")])
        assert record.metadata.session_id == "s1"
        assert record.metadata.start_time == stored[0].timestamp
        assert store.get_session("s1") == record
        assert store.get_session("s2") is None

    def test_create_with_taken_id_fails_and_keeps_the_first(self, store: Store) -> None:
        create(store, "s1", [user("first")])
        (result,) = store.write_batch([creation("s1", [user("second")])])
        assert isinstance(result, SessionExists)
        assert result.session_id == "s1"
        assert contents(all_events(store, "s1")) == ["first"]

    def test_create_without_events_keeps_the_callers_metadata(self, store: Store) -> None:
        metadata = SessionMetadata(session_id="s1", model="m1", last_sequence=7, message_count=3)
        metadata.start_time.FromNanoseconds(5 * 10**9)
        record, stored = run(store, lambda writer: writer.create_session(metadata, []))
        assert stored == []
        assert record.metadata.model == "m1"
        assert record.metadata.start_time == metadata.start_time
        assert record.metadata.modified_time == metadata.start_time
        assert record.metadata.last_sequence == 0
        assert record.metadata.message_count == 0
        assert store.read_events("s1", limit=10) == []

    def test_the_empty_id_names_no_session(self, store: Store) -> None:
        assert store.get_session("") is None
        with pytest.raises(ValueError):
            create(store, "")
        with pytest.raises(SessionNotFound):
            append(store, "", [user("a")])
        assert store.session_count() == 0

    # Appending

    def test_sequences_and_parent_ids_chain_across_batches(self, store: Store) -> None:
        batches = [[user("a"), reply("b")], [user("c")], [], [reply("d"), user("e"), reply("f")]]
        stale = batches[1][0]
        stale.sequence, stale.parent_id = 99, "not-the-parent"
        returned = create(store, "s", batches[0])[1]
        for batch in batches[1:]:
            returned += append(store, "s", batch)[1]

        events = all_events(store, "s")
        assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6]
        assert [e.parent_id for e in events] == ["", *(e.id for e in events[:-1])]
        assert [e.id for e in events] == [e.id for batch in batches for e in batch]
        assert returned == events
        assert (stale.sequence, stale.parent_id) == (99, "not-the-parent")

    def test_metadata_follows_appends(self, store: Store) -> None:
        prompt = "  Explain\nthe   borrow checker, " + "in detail " * 20
        create(store, "s", [event(SESSION_START, session_id="s")])
        append(store, "s", [user(prompt), reply("answer")])
        last = event(ASSISTANT_TURN_END, turn_id="t")
        record, _ = append(store, "s", [user("second prompt"), last])

        metadata = record_of(store, "s").metadata
        assert metadata.message_count == 3
        assert metadata.summary == summarize(prompt)
        assert metadata.last_sequence == 5
        assert metadata.last_event_id == last.id
        assert metadata.modified_time == last.timestamp
        assert store.get_session("s") == record

    def test_ephemeral_events_are_refused(self, store: Store) -> None:
        create(store, "s")
        delta = make_event(ASSISTANT_MESSAGE_DELTA, delta_content="x")
        with pytest.raises(ValueError):
            append(store, "s", [user("q"), delta])
        assert record_of(store, "s").metadata.last_sequence == 0

    def test_expected_last_sequence(self, store: Store) -> None:
        create(store, "s", [user("a"), reply("b")])
        before = store.get_session("s")
        with pytest.raises(SequenceConflict) as conflict:
            append(store, "s", [user("c")], expected_last_sequence=1)
        assert (conflict.value.expected, conflict.value.actual) == (1, 2)
        assert store.get_session("s") == before
        assert contents(all_events(store, "s")) == ["a", "b"]

        _, stored = append(store, "s", [user("c")], expected_last_sequence=2)
        assert stored[0].sequence == 3

    def test_append_to_unknown_session(self, store: Store) -> None:
        with pytest.raises(SessionNotFound):
            append(store, "nope", [user("a")])

    # Reading

    def test_read_oldest_first_pages_through_every_event_once(self, store: Store) -> None:
        create(store, "s", [user(str(n)) for n in range(1, 24)])
        seen: list[SessionEvent] = []
        while page := store.read_events("s", after=seen[-1].sequence if seen else 0, limit=5):
            assert len(page) <= 5
            seen += page
        assert [e.sequence for e in seen] == list(range(1, 24))
        assert seen == all_events(store, "s")

    def test_read_newest_first_pages_through_every_event_once(self, store: Store) -> None:
        create(store, "s", [user(str(n)) for n in range(1, 24)])
        seen: list[SessionEvent] = []
        while page := store.read_events(
            "s", before=seen[-1].sequence if seen else None, limit=5, newest_first=True
        ):
            seen += page
        assert [e.sequence for e in seen] == list(range(23, 0, -1))

    def test_read_window(self, store: Store) -> None:
        create(store, "s", [user(str(n)) for n in range(1, 11)])
        window = store.read_events("s", after=3, before=8, limit=100)
        assert [e.sequence for e in window] == [4, 5, 6, 7]
        newest = store.read_events("s", after=3, before=8, limit=2, newest_first=True)
        assert [e.sequence for e in newest] == [7, 6]
        assert store.read_events("s", limit=0) == []

    def test_read_windows_match_a_model(self, store: Store) -> None:
        # Neighbouring sessions, so that a scan running off its log would show.
        for session_id, count in (("a", 5), ("b", 30), ("c", 7)):
            create(store, session_id, [user(f"{session_id}{n}") for n in range(count)])

        bound = st.integers(min_value=0, max_value=35)

        @settings(max_examples=150, deadline=None)
        @given(after=bound, before=st.none() | bound, limit=bound, newest_first=st.booleans())
        def check(after: int, before: int | None, limit: int, newest_first: bool) -> None:
            upper = math.inf if before is None else before
            expected = [n for n in range(1, 31) if after < n < upper]
            if newest_first:
                expected.reverse()
            events = store.read_events(
                "b", after=after, before=before, limit=limit, newest_first=newest_first
            )
            assert [e.sequence for e in events] == expected[:limit]
            assert all(e.user_message.content.startswith("b") for e in events)

        check()

    def test_reads_bounded_by_bytes_stop_before_the_event_that_would_pass_the_budget(
        self, store: Store
    ) -> None:
        sizes = [300, 200, 900, 100, 100, 2000, 50]
        create(store, "s", [user("x" * size) for size in sizes])
        weight = {e.sequence: e.ByteSize() for e in all_events(store, "s")}
        budget = weight[2] + weight[3] + weight[4]

        def sequences(**window: Any) -> list[int]:
            return [e.sequence for e in store.read_events("s", **window)]

        assert sequences(after=1, limit=100, max_bytes=budget) == [2, 3, 4]
        assert sequences(after=1, limit=100, max_bytes=budget - 1) == [2, 3]
        assert sequences(after=1, limit=2, max_bytes=budget) == [2, 3]  # the count still bounds
        # The first event is returned whatever its size: a page is never empty.
        assert sequences(after=5, limit=100, max_bytes=1) == [6]
        assert sequences(after=5, limit=100, max_bytes=0) == [6]
        assert sequences(before=5, limit=100, newest_first=True, max_bytes=budget) == [4, 3, 2]
        assert sequences(before=7, limit=100, newest_first=True, max_bytes=weight[6] + 1) == [6]
        assert sequences(limit=100, max_bytes=sum(weight.values())) == list(range(1, 8))
        assert sequences(after=7, limit=100, max_bytes=1) == []
        with pytest.raises(ValueError):
            store.read_events("s", limit=10, max_bytes=-1)

    def test_byte_bounded_pages_walk_every_event_once(self, store: Store) -> None:
        rng = random.Random(7)
        create(store, "s", [user("x" * rng.randrange(1, 5000)) for _ in range(60)])
        budget = 8 * KiB
        for newest_first in (False, True):
            seen: list[SessionEvent] = []
            while page := store.read_events(
                "s",
                after=0 if newest_first or not seen else seen[-1].sequence,
                before=seen[-1].sequence if newest_first and seen else None,
                limit=1000,
                newest_first=newest_first,
                max_bytes=budget,
            ):
                assert len(page) == 1 or sum(e.ByteSize() for e in page) <= budget
                seen += page
            expected = list(range(1, 61))
            assert [e.sequence for e in seen] == (expected[::-1] if newest_first else expected)

    def test_read_unknown_session(self, store: Store) -> None:
        with pytest.raises(SessionNotFound):
            store.read_events("nope", limit=10)
        with pytest.raises(SessionNotFound):
            store.read_events("nope", limit=10, newest_first=True)

    # Batches

    def test_empty_batch(self, store: Store) -> None:
        assert store.write_batch([]) == []

    def test_an_operation_raising_store_error_is_undone_alone(self, store: Store) -> None:
        create(store, "a")
        create(store, "b")

        def half_done_then_fail(writer: StoreWriter) -> None:
            writer.create_session(SessionMetadata(session_id="c"), [user("c")])
            writer.append_events("a", [user("half")], open_turn=("t", "m"))
            writer.append_events("missing", [user("x")])

        results = store.write_batch(
            [
                lambda writer: writer.append_events("a", [user("a1")]),
                half_done_then_fail,
                creation("b"),
                lambda writer: writer.append_events("b", [user("b1")]),
            ]
        )
        assert isinstance(results[1], SessionNotFound)
        assert isinstance(results[2], SessionExists)
        assert store.get_session("c") is None
        assert contents(all_events(store, "a")) == ["a1"]
        assert contents(all_events(store, "b")) == ["b1"]
        assert store.sessions_with_open_turns() == []
        assert store.session_count() == 2
        assert append(store, "a", [user("a2")])[1][0].sequence == 2

    def test_any_other_exception_aborts_the_whole_batch(self, store: Store) -> None:
        create(store, "a", [user("a1")])
        before = store.get_session("a")

        class Boom(Exception):
            pass

        def boom(writer: StoreWriter) -> None:
            raise Boom

        with pytest.raises(Boom):
            store.write_batch(
                [
                    creation("new", [user("n")]),
                    lambda writer: writer.append_events("a", [user("a2")]),
                    boom,
                    creation("late"),
                ]
            )
        assert store.get_session("new") is None
        assert store.get_session("late") is None
        assert store.get_session("a") == before
        assert store.session_count() == 1
        assert listed_ids(store.list_sessions(limit=10)[0]) == ["a"]
        create(store, "new")

    def test_concurrent_batches_are_serialised(self, store: Store) -> None:
        create(store, "s")
        threads, appends = 4, 20
        start = threading.Barrier(threads)

        def writer() -> None:
            start.wait()
            for _ in range(appends):
                append(store, "s", [user("x")])

        workers = [threading.Thread(target=writer) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        events = all_events(store, "s")
        assert [e.sequence for e in events] == list(range(1, threads * appends + 1))
        assert [e.parent_id for e in events[1:]] == [e.id for e in events[:-1]]

    def test_reads_see_only_committed_prefixes(self, store: Store) -> None:
        seen = read_while_writing(store, batches=10, batch_size=20)
        assert seen == sorted(seen)

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
            run(store, lambda writer, m=metadata: writer.create_session(m, [user("hi")]))
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

    # Event ids

    def test_an_event_id_the_log_holds_is_refused(self, store: Store) -> None:
        _, (first,) = create(store, "s", [user("one")])
        other = user("other")
        other.id = first.id
        with pytest.raises(EventIdTaken) as taken:
            append(store, "s", [user("written?"), other])
        assert (taken.value.event_id, taken.value.sequence) == (first.id, 1)
        twice = user("twice")
        with pytest.raises(EventIdTaken):
            append(store, "s", [twice, twice])
        assert contents(all_events(store, "s")) == ["one"]
        assert record_of(store, "s").metadata.last_sequence == 1
        create(store, "elsewhere", [other])  # unique per session, not across sessions

    def test_a_taken_id_is_reported_before_a_stale_sequence(self, store: Store) -> None:
        _, (first,) = create(store, "s", [user("one")])
        append(store, "s", [reply("two")])
        again = user("one")
        again.id = first.id
        with pytest.raises(EventIdTaken):
            append(store, "s", [again], expected_last_sequence=1)

    def test_a_queued_message_may_not_take_a_logged_events_id(self, store: Store) -> None:
        _, (first,) = create(store, "s", [user("one")])
        queued = PendingMessage(message_id=first.id, content="again")
        with pytest.raises(EventIdTaken):
            append(store, "s", [], pending=[queued])
        assert list(record_of(store, "s").pending) == []
        append(store, "s", [], pending=[PendingMessage(message_id="fresh", content="x")])
        assert [p.message_id for p in record_of(store, "s").pending] == ["fresh"]

    def test_find_event_by_id(self, store: Store) -> None:
        _, stored = create(store, "s", [user("one"), reply("two")])
        _, (third,) = append(store, "s", [user("three")])
        assert store.find_event("s", stored[1].id) == stored[1]
        assert store.find_event("s", third.id) == third
        assert store.find_event("s", "no-such-id") is None
        assert store.find_event("s", "") is None
        with pytest.raises(SessionNotFound):
            store.find_event("gone", third.id)

    def test_a_failed_operation_leaves_no_id_behind(self, store: Store) -> None:
        create(store, "s")
        kept = user("kept")

        def append_then_fail(writer: StoreWriter) -> None:
            writer.append_events("s", [kept])
            raise SessionNotFound("s")

        (failed,) = store.write_batch([append_then_fail])
        assert isinstance(failed, SessionNotFound)
        assert store.find_event("s", kept.id) is None
        append(store, "s", [kept])
        assert store.find_event("s", kept.id) == all_events(store, "s")[0]

    def test_a_deleted_sessions_ids_are_free_again(self, store: Store) -> None:
        _, (first,) = create(store, "s", [user("one")])
        delete(store, "s")
        purge(store, 1)
        _, (again,) = create(store, "s", [first])
        assert again.id == first.id and store.find_event("s", first.id) == again

    # Staged imports

    def test_a_staged_import_is_invisible_until_committed(self, store: Store) -> None:
        staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
        first, second = user("one"), reply("two")
        run(store, lambda w: w.stage_events(staging, [first]))
        staged = run(store, lambda w: w.stage_events(staging, [second]))
        assert staged.metadata.last_sequence == 2
        assert store.get_session("s") is None and store.session_count() == 0
        assert store.list_sessions(limit=10) == ([], "")

        record, replaced = run(store, lambda w: w.commit_import(staging, "s", replace=False))
        assert not replaced
        assert record == record_of(store, "s")
        assert record.metadata.start_time == first.timestamp
        assert record.metadata.modified_time == second.timestamp
        assert contents(all_events(store, "s")) == ["one", "two"]
        assert [e.sequence for e in all_events(store, "s")] == [1, 2]
        assert all_events(store, "s")[1].parent_id == first.id
        assert store.find_event("s", second.id) is not None
        with pytest.raises(ValueError):
            run(store, lambda w: w.stage_events(staging, [user("late")]))

    def test_a_staged_log_refuses_a_repeated_id(self, store: Store) -> None:
        staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
        first = user("one")
        run(store, lambda w: w.stage_events(staging, [first]))
        with pytest.raises(EventIdTaken):
            run(store, lambda w: w.stage_events(staging, [reply("two"), first]))
        record, _ = run(store, lambda w: w.commit_import(staging, "s", replace=False))
        assert record.metadata.last_sequence == 1

    def test_commit_import_replaces_only_when_asked(self, store: Store) -> None:
        create(store, "s", [user("old")])
        append(store, "s", [], open_turn=("t", "m"))
        staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
        run(store, lambda w: w.stage_events(staging, [user("new")]))

        with pytest.raises(SessionExists):
            run(store, lambda w: w.commit_import(staging, "s", replace=False))
        assert contents(all_events(store, "s")) == ["old"]
        _, replaced = run(store, lambda w: w.commit_import(staging, "s", replace=True))
        assert replaced
        assert contents(all_events(store, "s")) == ["new"]
        assert listed_ids(store.list_sessions(limit=10)[0]) == ["s"]
        assert store.sessions_with_open_turns() == [] and store.session_count() == 1
        assert purge(store, 10) == 1  # the old log's one event

    def test_a_replace_that_fails_leaves_the_old_session_whole(self, store: Store) -> None:
        _, old = create(store, "s", [user("old"), reply("answer")])
        staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
        run(store, lambda w: w.stage_events(staging, [user("new")]))

        def replace_then_fail(writer: StoreWriter) -> None:
            writer.commit_import(staging, "s", replace=True)
            raise RuntimeError("the disk went away")

        with pytest.raises(RuntimeError):
            store.write_batch([replace_then_fail])
        assert all_events(store, "s") == old
        assert store.find_event("s", old[1].id) == old[1]
        run(store, lambda w: w.commit_import(staging, "renamed", replace=False))
        assert contents(all_events(store, "renamed")) == ["new"]

    def test_a_discarded_import_is_purged(self, store: Store) -> None:
        staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
        run(store, lambda w: w.stage_events(staging, [user(str(n)) for n in range(5)]))
        run(store, lambda w: w.discard_import(staging))
        run(store, lambda w: w.discard_import(staging))  # twice: nothing more to do
        assert purge(store, 10) == 5
        with pytest.raises(ValueError):
            run(store, lambda w: w.commit_import(staging, "s", replace=False))
        assert store.get_session("s") is None

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


class TestMemoryStore(StoreContract):
    def make_store(self, tmp_path: Path) -> Store:
        return MemoryStore()

    def open_copy(self, copy: Path) -> Store | None:
        return None


class TestLmdbStore(StoreContract):
    def make_store(self, tmp_path: Path) -> Store:
        return LmdbStore.open(tmp_path / "store")

    def open_copy(self, copy: Path) -> Store | None:
        return LmdbStore.open(copy.parent)


def set_schema_version(path: Path, version: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"schema_version", version, db=env.open_db(b"sys", txn=txn))
    finally:
        env.close()


def event_entries(path: Path, table: bytes = b"events") -> int:
    """Entries in one of the store's tables (events by default), read from the files directly."""
    env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return int(txn.stat(env.open_db(table, txn=txn, create=False))["entries"])
    finally:
        env.close()


class TestLmdbFiles:
    """What only a store on disk can get wrong."""

    def test_purging_goes_on_after_reopening(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        create(store, "kept", [user("k")])
        create(store, "gone", [user(str(n)) for n in range(300)])
        delete(store, "gone")
        assert purge(store, 100) == 100
        store.close()  # as if the daemon stopped (or crashed) half way
        assert event_entries(path) == 201

        store = LmdbStore.open(path)
        try:
            assert [purge(store, 150), purge(store, 150)] == [150, 50]
            assert contents(all_events(store, "kept")) == ["k"]
        finally:
            store.close()
        assert event_entries(path) == 1

    def test_a_store_from_before_the_purge_table_opens(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        LmdbStore.open(path).close()
        env = lmdb.open(str(path), max_dbs=8)
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"purge", txn=txn), delete=True)
        env.close()

        store = LmdbStore.open(path)
        try:
            create(store, "s", [user("x")])
            delete(store, "s")
            assert purge(store, 10) == 1
        finally:
            store.close()

    def test_data_survives_reopening(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        create(store, "a", [user("a1"), reply("a2")])
        create(store, "b", [user("b1")])
        append(store, "b", [user("b2")], open_turn=("t", "m"))
        create(store, "gone")
        delete(store, "gone")
        before = ([store.get_session(s) for s in "ab"], store.list_sessions(limit=10))
        log_numbers = {record_of(store, s).log_number for s in "ab"}
        store.close()

        store = LmdbStore.open(path)
        try:
            assert ([store.get_session(s) for s in "ab"], store.list_sessions(limit=10)) == before
            assert contents(all_events(store, "a")) == ["a1", "a2"]
            assert listed_ids(store.sessions_with_open_turns()) == ["b"]
            assert store.session_count() == 2
            record, _ = create(store, "gone")
            assert record.log_number > max(log_numbers) + 1
        finally:
            store.close()

    def test_a_new_store_directory_is_private(self, tmp_path: Path) -> None:
        path = tmp_path / "deep" / "store"
        LmdbStore.open(path).close()
        assert path.stat().st_mode & 0o777 == 0o700

    def test_an_import_cut_short_is_discarded_at_the_next_open(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
        run(store, lambda w: w.stage_events(staging, [user(str(n)) for n in range(30)]))
        store.close()  # as if the daemon died mid-import
        assert event_entries(path) == 30

        store = LmdbStore.open(path)
        try:
            with pytest.raises(ValueError):
                run(store, lambda w: w.commit_import(staging, "s", replace=False))
            assert purge(store, 100) == 30
            assert store.get_session("s") is None
        finally:
            store.close()
        assert event_entries(path) == 0
        assert event_entries(path, b"event_ids") == 0

    def test_purging_removes_the_id_index_too(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        create(store, "gone", [user(str(n)) for n in range(7)])
        create(store, "kept", [user("k")])
        delete(store, "gone")
        assert [purge(store, 4), purge(store, 4)] == [4, 3]
        store.close()
        assert event_entries(path, b"event_ids") == 1

    def test_a_version_1_store_gets_its_id_index_at_open(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        _, big = create(store, "big", [user(str(n)) for n in range(25)])
        _, small = create(store, "small", [user("one")])
        create(store, "gone", [user("x")])
        delete(store, "gone")
        store.close()
        env = lmdb.open(str(path), max_dbs=8)
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"event_ids", txn=txn), delete=True)
            txn.drop(env.open_db(b"staging", txn=txn), delete=True)
        env.close()
        set_schema_version(path, b"1")

        monkeypatch.setattr(lmdb_environment, "MIGRATION_STEP", 4)  # several steps
        store = LmdbStore.open(path)
        try:
            assert all(store.find_event("big", e.id) == e for e in big)
            assert store.find_event("small", small[0].id) == small[0]
            with pytest.raises(EventIdTaken):
                append(store, "big", [big[24]])
        finally:
            store.close()
        assert event_entries(path, b"event_ids") == 26
        env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
        with env.begin() as txn:
            assert txn.get(b"schema_version", db=env.open_db(b"sys", txn=txn)) == b"2"
        env.close()

    def test_a_newer_schema_is_refused_untouched(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path)
        create(store, "a", [user("a")])
        store.close()
        newer = SCHEMA_VERSION + 1
        set_schema_version(path, str(newer).encode())
        data = (path / "data.mdb").read_bytes()

        with pytest.raises(StoreVersionError) as refused:
            LmdbStore.open(path, initial_map_size=128 * KiB)
        message = str(refused.value)
        assert str(path) in message
        assert f"version {newer}" in message
        assert f"version {SCHEMA_VERSION}" in message
        assert "Upgrade copilotd" in message
        assert (path / "data.mdb").read_bytes() == data

    def test_an_unreadable_schema_version_is_corrupt(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        LmdbStore.open(path).close()
        set_schema_version(path, b"one")
        with pytest.raises(StoreCorrupt):
            LmdbStore.open(path)

    @pytest.mark.parametrize("size", [7, 64 * KiB])
    def test_a_garbage_file_is_refused_untouched(self, tmp_path: Path, size: int) -> None:
        path = tmp_path / "store"
        path.mkdir()
        garbage = random.Random(size).randbytes(size)
        (path / "data.mdb").write_bytes(garbage)
        with pytest.raises(StoreCorrupt) as refused:
            LmdbStore.open(path)
        assert str(path) in str(refused.value)
        assert (path / "data.mdb").read_bytes() == garbage

    def test_another_programs_lmdb_environment_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        env = lmdb.open(str(path))
        with env.begin(write=True) as txn:
            txn.put(b"someone", b"else's data")
        env.close()
        data = (path / "data.mdb").read_bytes()
        with pytest.raises(StoreCorrupt):
            LmdbStore.open(path)
        assert (path / "data.mdb").read_bytes() == data

    def test_the_map_grows_by_itself(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path, initial_map_size=64 * KiB)
        create(store, "s")
        for batch in range(20):
            first = batch * 100 + 1
            append(store, "s", [user(numbered(n)) for n in range(first, first + 100)])
        assert store.map_size >= 2 * 1024 * KiB
        check_prefix(all_events(store, "s"))
        store.close()

        store = LmdbStore.open(path, initial_map_size=64 * KiB)
        try:
            events = all_events(store, "s")
            assert len(events) == 2000
            check_prefix(events)
            append(store, "s", [user(numbered(2001))])
        finally:
            store.close()

    def test_a_size_cap_gives_store_full_and_reads_go_on(self, tmp_path: Path) -> None:
        path = tmp_path / "store"
        store = LmdbStore.open(path, initial_map_size=64 * KiB, max_map_size=512 * KiB)
        create(store, "s")
        written = 0
        with pytest.raises(StoreFull) as full:
            for _ in range(100):
                batch = [user(numbered(n)) for n in range(written + 1, written + 21)]
                append(store, "s", batch)
                written += len(batch)
        assert "size cap" in str(full.value)
        assert written > 0
        assert store.map_size == 512 * KiB

        with pytest.raises(StoreFull):
            store.write_batch([creation("t", [user(numbered(n)) for n in range(1, 200)])])
        assert record_of(store, "s").metadata.last_sequence == written
        assert store.get_session("t") is None
        check_prefix(all_events(store, "s"))
        assert len(store.read_events("s", limit=5, newest_first=True)) == 5
        assert listed_ids(store.list_sessions(limit=10)[0]) == ["s"]
        store.close()

        store = LmdbStore.open(path, initial_map_size=64 * KiB)
        try:
            append(store, "s", [user(numbered(n)) for n in range(written + 1, written + 41)])
            check_prefix(all_events(store, "s"))
        finally:
            store.close()

    def test_a_full_disk_at_commit_is_store_full(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = LmdbStore.open(tmp_path / "store")
        create(store, "a", [user("a1")])
        before = store.get_session("a")

        def disk_full(txn: lmdb.Transaction) -> None:
            txn.abort()
            raise lmdb.DiskError("mdb_txn_commit", errno.ENOSPC)

        try:
            monkeypatch.setattr(LmdbStore, "_commit", staticmethod(disk_full))
            with pytest.raises(StoreFull) as full:
                store.write_batch([creation("b"), lambda w: w.append_events("a", [user("a2")])])
            assert "disk" in str(full.value)
            monkeypatch.undo()

            assert store.get_session("b") is None
            assert store.get_session("a") == before
            create(store, "b")
        finally:
            store.close()

    def test_reads_during_map_growth_are_consistent(self, tmp_path: Path) -> None:
        store = LmdbStore.open(tmp_path / "store", initial_map_size=64 * KiB)
        try:
            initial = store.map_size
            seen = read_while_writing(store, batches=30, batch_size=25)
            assert store.map_size >= 8 * initial
            assert len(seen) > 1
        finally:
            store.close()


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    stores = [open_store("lmdb", tmp_path / "store"), open_store("memory", None)]
    assert [type(store) for store in stores] == [LmdbStore, MemoryStore]
    for store in stores:
        store.close()
    with pytest.raises(ValueError):
        open_store("lmdb", None)
    with pytest.raises(ValueError):
        open_store("sqlite", tmp_path)
