"""The store contract for turns and queues, on every backend, and its leases across
daemons on PostgreSQL (two stores on one database stand for two daemons)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest

from copilotd.store import (
    EventIdTaken,
    PendingMessage,
    QueueEdit,
    SessionMetadata,
    SessionNotFound,
    Store,
    StoreChange,
    TurnBusy,
    TurnLost,
)
from copilotd.store.postgres_store import PostgresStore
from tests.support.postgres import PostgresCluster
from tests.support.store_ops import (
    LmdbBackend,
    MemoryBackend,
    PostgresBackend,
    append,
    create,
    delete,
    listed_ids,
    record_of,
    reply,
    run,
    user,
)


def queued(message_id: str) -> PendingMessage:
    return PendingMessage(message_id=message_id, content=f"text of {message_id}")


def queue_ids(store: Store, session_id: str) -> list[str]:
    return [message.message_id for message in record_of(store, session_id).pending]


class TurnContract:
    def test_a_second_turn_cannot_open_while_one_is_open(self, store: Store) -> None:
        create(store, "s")
        append(store, "s", [user("q1")], open_turn=("t1", "m1"))
        with pytest.raises(TurnBusy, match="turn 't1' is running"):
            append(store, "s", [user("q2")], open_turn=("t2", "m2"))
        assert record_of(store, "s").metadata.last_sequence == 1  # nothing written
        record, _ = append(store, "s", [reply("a")], close_turn=True, open_turn=("t2", "m2"))
        assert record.open_turn_id == "t2"

    def test_a_fenced_write_needs_its_turn_to_be_the_open_one(self, store: Store) -> None:
        create(store, "s")
        append(store, "s", [user("q")], open_turn=("t1", "m1"))
        _, stored = append(store, "s", [reply("part")], fence="t1")
        assert [event.sequence for event in stored] == [2]
        # Someone else closed t1 (a daemon that took over): t1's writer is fenced off.
        append(store, "s", [], close_turn=True, fence="t1")
        with pytest.raises(TurnLost, match="no turn is open"):
            append(store, "s", [reply("late")], close_turn=True, fence="t1")
        append(store, "s", [user("q2")], open_turn=("t2", "m2"))
        with pytest.raises(TurnLost, match="turn 't2' is open"):
            append(store, "s", [reply("late")], fence="t1")
        assert record_of(store, "s").metadata.last_sequence == 3

    def test_queue_edits_add_remove_and_keep_a_message_once(self, store: Store) -> None:
        create(store, "s")
        append(store, "s", [], queue=QueueEdit(add=queued("a")))
        append(store, "s", [], queue=QueueEdit(add=queued("b")))
        append(store, "s", [], queue=QueueEdit(add=queued("now"), first=True))
        assert queue_ids(store, "s") == ["now", "a", "b"]
        record, _ = append(store, "s", [], queue=QueueEdit(add=queued("a")))  # sent again
        assert queue_ids(store, "s") == ["now", "a", "b"]
        assert record.metadata.pending_messages == 3
        start = user("now")
        start.id = "now"
        record, _ = append(
            store, "s", [start], open_turn=("t", "now"), queue=QueueEdit(remove="now")
        )
        assert queue_ids(store, "s") == ["a", "b"] and record.metadata.pending_messages == 2
        with pytest.raises(EventIdTaken):  # its id is an event of the log now
            append(store, "s", [], queue=QueueEdit(add=queued("now")))
        assert listed_ids(store.sessions_with_open_turns()) == ["s"]

    def test_a_new_message_cannot_open_a_turn_ahead_of_queued_ones(self, store: Store) -> None:
        create(store, "s")
        append(store, "s", [], queue=QueueEdit(add=queued("m2")))
        append(store, "s", [], queue=QueueEdit(add=queued("m3")))
        # No turn runs (its daemon died between turns), yet m4 must wait its turn.
        with pytest.raises(TurnBusy, match="2 queued message"):
            append(store, "s", [user("m4")], open_turn=("t4", "m4"))
        assert record_of(store, "s").metadata.last_sequence == 0  # nothing written
        record, _ = append(
            store, "s", [user("m2")], open_turn=("t2", "m2"), queue=QueueEdit(remove="m2")
        )
        assert (record.open_turn_id, queue_ids(store, "s")) == ("t2", ["m3"])

    def test_taking_over_on_a_store_of_one_daemon_always_succeeds(self, store: Store) -> None:
        create(store, "s")
        append(store, "s", [user("q")], open_turn=("t", "m"))
        assert run(store, lambda writer: writer.take_over("s")) == ""
        append(store, "s", [], close_turn=True, fence="t")
        with pytest.raises(SessionNotFound):
            run(store, lambda writer: writer.take_over("gone"))


class TestMemoryStore(MemoryBackend, TurnContract):
    pass


class TestLmdbStore(LmdbBackend, TurnContract):
    pass


class TestPostgresStore(PostgresBackend, TurnContract):
    pass


# Leases across daemons: only PostgreSQL is shared.


@pytest.fixture
def dsn(postgres_cluster: PostgresCluster, postgres_database: str) -> str:
    return postgres_cluster.dsn(postgres_database)


@pytest.fixture
def daemons(dsn: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two daemons' stores on one database, with leases that outlive any test."""
    first = PostgresStore.open(dsn, lease_owner="daemon-a", lease_seconds=3600)
    second = PostgresStore.open(dsn, lease_owner="daemon-b", lease_seconds=3600)
    yield first, second
    first.close()
    second.close()


def test_a_live_lease_keeps_other_daemons_out(daemons: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = daemons
    create(a, "s")
    append(a, "s", [user("q")], open_turn=("t", "m"))
    with pytest.raises(TurnBusy, match="daemon 'daemon-a' holds its lease"):
        run(b, lambda writer: writer.take_over("s"))
    assert b.sessions_with_open_turns() == []  # not b's to recover
    assert listed_ids(a.sessions_with_open_turns()) == ["s"]
    # Writes outside the turn go on from anywhere; the turn's own only from its owner.
    append(b, "s", [user("note")])
    append(b, "s", [], queue=QueueEdit(add=queued("m2")))
    with pytest.raises(TurnLost, match="daemon 'daemon-a' holds it now"):
        append(b, "s", [reply("forged")], close_turn=True, fence="t")
    record, _ = append(a, "s", [reply("a")], close_turn=True, fence="t")
    # Messages wait: the daemon that closed the turn keeps the lease to start the next.
    assert [p.message_id for p in record.pending] == ["m2"]
    with pytest.raises(TurnBusy, match="daemon 'daemon-a'"):
        append(b, "s", [user("m2")], open_turn=("t2", "m2"), queue=QueueEdit(remove="m2"))
    append(a, "s", [user("m2")], open_turn=("t2", "m2"), queue=QueueEdit(remove="m2"))
    append(a, "s", [], close_turn=True, fence="t2")
    # Idle: the lease is gone, any daemon may run the next turn.
    append(b, "s", [user("q3")], open_turn=("t3", "m3"))


def test_an_expired_lease_is_taken_over_and_its_old_owner_fenced_off(dsn: str) -> None:
    # A lease of 0 seconds has expired by the next transaction: a daemon that died.
    dead = PostgresStore.open(dsn, lease_owner="dead", lease_seconds=0)
    alive = PostgresStore.open(dsn, lease_owner="alive", lease_seconds=3600)
    try:
        create(dead, "s")
        append(dead, "s", [user("q")], open_turn=("t", "m"))
        append(dead, "s", [], queue=QueueEdit(add=queued("next")))
        assert listed_ids(alive.sessions_with_open_turns()) == ["s"]
        assert run(alive, lambda writer: writer.take_over("s")) == "dead"
        with pytest.raises(TurnLost, match="'alive' holds it now"):
            append(dead, "s", [reply("late")], close_turn=True, fence="t")
        record, _ = append(alive, "s", [reply("interrupted")], close_turn=True, fence="t")
        assert record.open_turn_id == "" and [p.message_id for p in record.pending] == ["next"]
        assert dead.sessions_with_open_turns() == []  # alive's lease is live now
        assert alive.renew_leases() == 1 and dead.renew_leases() == 0
        delete(alive, "s")
        assert alive.renew_leases() == 0  # a deleted session's lease goes with it
    finally:
        dead.close()
        alive.close()


def test_a_watcher_hears_other_daemons_changes_in_commit_order(
    daemons: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = daemons
    heard: queue.Queue[StoreChange | None] = queue.Queue()
    b.watch(heard.put)
    create(a, "s")
    append(a, "s", [user("one"), user("two")])
    run(a, lambda writer: writer.set_pinned("s", True))
    append(b, "s", [user("own")])  # b's own writes are not reported back to it
    delete(a, "s")
    changes = [heard.get(timeout=10) for _ in range(4)]
    assert changes == [
        StoreChange("created", "s", 0),
        StoreChange("events", "s", 2),
        StoreChange("updated", "s", 2),
        StoreChange("deleted", "s", 0),
    ]
    assert heard.empty()


def test_daemons_deleting_and_purging_at_once_never_double_delete(
    daemons: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = daemons
    for n in range(6):
        create(a, f"s{n}", [user(str(k)) for k in range(50)])
    outcomes: queue.Queue[str] = queue.Queue()

    def sweep(store: PostgresStore) -> None:
        # The same sessions, as two daemons' retention sweeps would select them.
        for n in range(6):
            try:
                delete(store, f"s{n}")
                outcomes.put("deleted")
            except SessionNotFound:
                outcomes.put("gone")
        removed = 0
        while (step := run(store, lambda writer: writer.purge_deleted(7))) > 0:
            removed += step
        outcomes.put(f"purged {removed}")

    threads = [threading.Thread(target=sweep, args=(store,)) for store in daemons]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = [outcomes.get_nowait() for _ in range(14)]
    assert results.count("deleted") == 6 and results.count("gone") == 6
    purged = sum(int(r.split()[1]) for r in results if r.startswith("purged"))
    assert purged == 6 * 50  # every event removed once, by one daemon or the other
    assert a.session_count() == 0 and b.session_count() == 0


def test_a_daemon_starting_keeps_another_daemons_staged_import(dsn: str) -> None:
    importer = PostgresStore.open(dsn, lease_owner="importer")
    try:
        staging = run(importer, lambda writer: writer.begin_import(SessionMetadata(session_id="s")))
        run(importer, lambda writer: writer.stage_events(staging, [user("old")]))
        PostgresStore.open(dsn, lease_owner="newcomer").close()  # another daemon starts
        run(importer, lambda writer: writer.stage_events(staging, [user("older")]))
        record, _ = run(importer, lambda writer: writer.commit_import(staging, "s", replace=False))
        assert record.metadata.last_sequence == 2
    finally:
        importer.close()
    # The importer's own crash: its next start discards what it left staged.
    crashed = PostgresStore.open(dsn, lease_owner="importer")
    staging = run(crashed, lambda writer: writer.begin_import(SessionMetadata(session_id="s")))
    crashed.close()
    restarted = PostgresStore.open(dsn, lease_owner="importer")
    try:
        with pytest.raises(ValueError, match="no import is being staged"):
            run(restarted, lambda writer: writer.stage_events(staging, [user("x")]))
    finally:
        restarted.close()
