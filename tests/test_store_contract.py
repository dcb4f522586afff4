"""The storage contract (``copilotd/store/base.py``) against every backend, part one:
creating sessions, appending and reading events, batches.

``StoreContract`` holds this half of the contract (``tests/test_store_lifecycle.py``
the other); each backend subclasses it and only says how to make a store
(``tests/support/store_ops.py``).
"""

from __future__ import annotations

import math
import random
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copilotd.events import (
    ASSISTANT_MESSAGE_DELTA,
    ASSISTANT_TURN_END,
    SESSION_START,
    make_event,
    summarize,
)
from copilotd.store import (
    SequenceConflict,
    SessionEvent,
    SessionExists,
    SessionMetadata,
    SessionNotFound,
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
    contents,
    create,
    creation,
    event,
    listed_ids,
    read_while_writing,
    record_of,
    reply,
    run,
    user,
)


class StoreContract(Backend):
    """Creating, appending, reading and batching: every backend passes it unchanged."""

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


class TestMemoryStore(MemoryBackend, StoreContract):
    pass


class TestLmdbStore(LmdbBackend, StoreContract):
    pass


class TestPostgresStore(PostgresBackend, StoreContract):
    pass
