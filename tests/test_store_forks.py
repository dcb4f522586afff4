"""The storage contract for forks and rewinds, run against every backend.

A fork refers to its parent's log instead of copying it; these tests check
that it reads exactly its history (never the parent's events past the fork
point), that deleting a parent leaves its forks whole and that shared events
are purged only with the last session that reads them; and that a rewind is
one event whose cut the store records with it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from copilotd import events as ev
from copilotd.store import (
    EventIdTaken,
    SessionEvent,
    SessionExists,
    SessionMetadata,
    SessionNotFound,
    SessionRecord,
    Store,
    StoreWriter,
    TurnBusy,
)
from copilotd.store.base import SequenceUnavailable
from copilotd.store.visible import read_visible
from tests.support.store_ops import (
    LmdbBackend,
    MemoryBackend,
    PostgresBackend,
    all_events,
    append,
    contents,
    create,
    delete,
    event,
    purge,
    record_of,
    reply,
    run,
    user,
)


def forking(
    source: str, session_id: str, up_to: int
) -> Callable[[StoreWriter], tuple[SessionRecord, list[SessionEvent]]]:
    marker = event(ev.SESSION_FORK, parent_session_id=source, fork_sequence=up_to)
    return lambda writer: writer.fork_session(source, session_id, up_to, [marker])


def fork(store: Store, source: str, session_id: str, up_to: int) -> SessionRecord:
    record, _ = run(store, forking(source, session_id, up_to))
    return record


def rewind(store: Store, session_id: str, to: int, **options: object) -> SessionEvent:
    cut = event(ev.SESSION_SNAPSHOT_REWIND, to_sequence=to)
    _, stored = append(store, session_id, [cut], **options)
    return stored[0]


def said(events: list[SessionEvent]) -> list[str]:
    """The messages among ``events`` (markers left out)."""
    return [text for text in contents(events) if text]


def numbered_session(store: Store, session_id: str, count: int) -> None:
    create(store, session_id, [user(f"m{n}") for n in range(1, count + 1)])


class ForkContract:
    """Forks and rewinds: every backend passes it unchanged."""

    def test_a_fork_reads_its_parent_up_to_the_point_then_its_own(self, store: Store) -> None:
        numbered_session(store, "p", 6)
        record = fork(store, "p", "f", 4)
        assert (record.metadata.parent_session_id, record.metadata.fork_sequence) == ("p", 4)
        assert record.metadata.last_sequence == 5  # the session.fork marker
        append(store, "p", [user("p7")])
        append(store, "f", [user("f6"), reply("f7")])

        assert said(all_events(store, "f")) == ["m1", "m2", "m3", "m4", "f6", "f7"]
        assert [e.sequence for e in all_events(store, "f")] == list(range(1, 8))
        assert said(all_events(store, "p")) == ["m1", "m2", "m3", "m4", "m5", "m6", "p7"]
        newest = store.read_events("f", limit=4, newest_first=True)
        assert [e.sequence for e in newest] == [7, 6, 5, 4]
        window = store.read_events("f", after=2, before=6, limit=10)
        assert [e.sequence for e in window] == [3, 4, 5]
        assert said(store.read_events("f", after=3, limit=2)) == ["m4"]

    def test_a_byte_bounded_read_across_logs_skips_nothing(self, store: Store) -> None:
        create(store, "p", [user("x" * 1000), user("small")])
        fork(store, "p", "f", 2)
        append(store, "f", [user("y" * 1000), user("tiny")])
        size = all_events(store, "f")[0].ByteSize()
        # The budget takes the first event only: the smaller second must not follow it.
        page = store.read_events("f", limit=10, max_bytes=size + 5)
        assert [e.sequence for e in page] == [1]
        newest = store.read_events("f", limit=10, newest_first=True, max_bytes=size * 2)
        assert [e.sequence for e in newest] == [5, 4, 3, 2]

    def test_forks_of_forks(self, store: Store) -> None:
        numbered_session(store, "p", 5)
        fork(store, "p", "f1", 3)
        append(store, "f1", [user("a"), user("b")])  # sequences 5 and 6
        fork(store, "f1", "f2", 6)
        append(store, "f2", [user("c")])
        fork(store, "f1", "f3", 2)  # before f1's own fork point

        assert said(all_events(store, "f2")) == ["m1", "m2", "m3", "a", "b", "c"]
        assert said(all_events(store, "f3")) == ["m1", "m2"]
        assert record_of(store, "f3").metadata.parent_session_id == "f1"
        delete(store, "p")
        delete(store, "f1")
        assert said(all_events(store, "f2")) == ["m1", "m2", "m3", "a", "b", "c"]
        assert said(all_events(store, "f3")) == ["m1", "m2"]

    def test_deleting_a_parent_leaves_its_forks_whole(self, store: Store) -> None:
        numbered_session(store, "p", 10)
        fork(store, "p", "f1", 8)
        fork(store, "p", "f2", 4)
        delete(store, "p")

        assert store.get_session("p") is None
        with pytest.raises(SessionNotFound):
            store.read_events("p", limit=10)
        assert sorted(r.metadata.session_id for r in store.list_sessions(limit=10)[0]) == [
            "f1",
            "f2",
        ]
        assert purge(store, 1000) == 0  # every event of p is still read by a fork
        assert said(all_events(store, "f1")) == [f"m{n}" for n in range(1, 9)]
        delete(store, "f1")
        assert purge(store, 1000) == 1  # f1's own marker; f2 still reads p's log
        assert said(all_events(store, "f2")) == ["m1", "m2", "m3", "m4"]
        delete(store, "f2")
        assert purge(store, 1000) == 11  # the last reader: p's ten events and f2's marker

    def test_deleting_a_fork_keeps_its_parent(self, store: Store) -> None:
        numbered_session(store, "p", 3)
        fork(store, "p", "f", 3)
        delete(store, "f")
        assert purge(store, 1000) == 1
        delete(store, "p")
        assert purge(store, 1000) == 3

    def test_fork_refusals(self, store: Store) -> None:
        numbered_session(store, "p", 3)
        create(store, "taken")
        for point in (0, 4):
            with pytest.raises(SequenceUnavailable) as refused:
                fork(store, "p", "f", point)
            assert refused.value.why == "range"
        with pytest.raises(SessionNotFound):
            fork(store, "nobody", "f", 1)
        with pytest.raises(SessionExists):
            fork(store, "p", "taken", 2)
        assert store.get_session("f") is None
        assert purge(store, 1000) == 0

    def test_event_ids_are_unique_across_the_inherited_history(self, store: Store) -> None:
        first, late = user("m1"), user("late")
        create(store, "p", [first, user("m2")])
        fork(store, "p", "f", 2)
        append(store, "p", [late])
        found = store.find_event("f", first.id)
        assert found is not None and found.sequence == 1
        assert store.find_event("f", late.id) is None  # past the fork point: not the fork's
        with pytest.raises(EventIdTaken):
            append(store, "f", [first])
        copy = SessionEvent()
        copy.CopyFrom(late)
        append(store, "f", [copy])
        assert said(all_events(store, "f")) == ["m1", "m2", "late"]

    def test_an_imported_fork_stands_alone(self, store: Store) -> None:
        numbered_session(store, "p", 2)
        metadata = SessionMetadata()
        metadata.CopyFrom(fork(store, "p", "f", 2).metadata)
        metadata.session_id = "standalone"
        record, _ = run(store, lambda writer: writer.create_session(metadata, [user("x")]))
        assert (record.metadata.parent_session_id, record.metadata.fork_sequence) == ("", 0)

    # Rewinds

    def test_a_rewind_cuts_in_one_event_and_keeps_the_log(self, store: Store) -> None:
        numbered_session(store, "s", 5)
        cut = rewind(store, "s", 2)
        data = cut.session_snapshot_rewind
        assert cut.sequence == 6
        assert (data.first_rewound_sequence, data.last_rewound_sequence) == (3, 5)
        assert data.events_removed == 3
        record = record_of(store, "s")
        assert [(r.first, r.last) for r in record.rewound] == [(3, 5)]
        assert record.metadata.rewound_events == 3
        append(store, "s", [user("again")])

        assert said(all_events(store, "s")) == ["m1", "m2", "m3", "m4", "m5", "again"]
        visible = read_visible(store, "s", limit=100)
        assert [e.sequence for e in visible] == [1, 2, 6, 7]
        newest = read_visible(store, "s", limit=3, newest_first=True)
        assert [e.sequence for e in newest] == [7, 6, 2]
        assert len(read_visible(store, "s", limit=100, include_rewound=True)) == 7

    def test_rewinds_over_rewinds(self, store: Store) -> None:
        numbered_session(store, "s", 4)
        rewind(store, "s", 3)  # cuts 4; the event is 5
        append(store, "s", [user("b6"), user("b7")])
        second = rewind(store, "s", 2)  # cuts 3..7, of which 4 was cut already
        assert second.session_snapshot_rewind.events_removed == 4
        assert [(r.first, r.last) for r in record_of(store, "s").rewound] == [(3, 7)]
        assert record_of(store, "s").metadata.rewound_events == 5
        assert [e.sequence for e in read_visible(store, "s", limit=100)] == [1, 2, 8]

    def test_rewind_refusals(self, store: Store) -> None:
        numbered_session(store, "s", 4)
        rewind(store, "s", 2)
        for to, why in ((0, "range"), (5, "range"), (99, "range"), (3, "rewound")):
            with pytest.raises(SequenceUnavailable) as refused:
                rewind(store, "s", to)
            assert refused.value.why == why
        append(store, "s", [user("q")], open_turn=("t1", "m1"))
        with pytest.raises(TurnBusy):
            rewind(store, "s", 1)
        assert record_of(store, "s").metadata.last_sequence == 6

    def test_a_fork_inherits_the_rewinds_before_its_point(self, store: Store) -> None:
        numbered_session(store, "p", 4)
        rewind(store, "p", 2)  # cuts 3..4; the event is 5
        append(store, "p", [user("p6")])
        with pytest.raises(SequenceUnavailable) as refused:
            fork(store, "p", "f", 3)
        assert refused.value.why == "rewound"
        record = fork(store, "p", "f", 6)
        assert [(r.first, r.last) for r in record.rewound] == [(3, 4)]
        assert said(read_visible(store, "f", limit=100)) == ["m1", "m2", "p6"]
        rewind(store, "p", 1)
        assert [(r.first, r.last) for r in record_of(store, "f").rewound] == [(3, 4)]


class TestMemoryForks(MemoryBackend, ForkContract):
    pass


class TestLmdbForks(LmdbBackend, ForkContract):
    pass


class TestPostgresForks(PostgresBackend, ForkContract):
    pass
