"""What only the PostgreSQL backend can get wrong: two stores (two daemons) on one
database, its schema and version, index range scans at 100,000 sessions, and
where a DSN's password must never appear. The contract it shares with the other
backends is in tests/test_store_contract.py and tests/test_store_lifecycle.py.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from copilotd.store import (
    SequenceConflict,
    SessionMetadata,
    SessionNotFound,
    StoreCorrupt,
    StoreVersionError,
    StoreWriter,
    open_store,
)
from copilotd.store.postgres_schema import SCHEMA, SCHEMA_VERSION, StoreUnreachable, describe_dsn
from copilotd.store.postgres_store import (
    FIND_EVENT,
    LIST_FIRST_PAGE,
    LIST_NEXT_PAGE,
    OPEN_TURNS,
    PostgresStore,
    events_query,
)
from copilotd.store.postgres_writer import PURGE_STEP
from tests.support.postgres import APP_PASSWORD, APP_ROLE, PostgresCluster
from tests.support.store_ops import (
    all_events,
    append,
    contents,
    create,
    delete,
    listed_ids,
    purge,
    record_of,
    reply,
    run,
    user,
)


@pytest.fixture
def dsn(postgres_cluster: PostgresCluster, postgres_database: str) -> str:
    return postgres_cluster.dsn(postgres_database)


@pytest.fixture
def two_stores(dsn: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, as two daemons on two hosts would have."""
    first, second = PostgresStore.open(dsn), PostgresStore.open(dsn)
    yield first, second
    first.close()
    second.close()


def test_two_stores_appending_to_one_session_keep_sequences_gap_free(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = two_stores
    create(first, "s")
    start = threading.Barrier(4)
    failures: list[BaseException] = []

    def writer(store: PostgresStore, name: str) -> None:
        try:
            start.wait()
            for n in range(25):
                append(store, "s", [user(f"{name}{n}")])
        except BaseException as error:
            failures.append(error)

    threads = [
        threading.Thread(target=writer, args=(store, f"{name}-"))
        for store, name in ((first, "a"), (second, "b"), (first, "c"), (second, "d"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    events = all_events(second, "s")
    assert [e.sequence for e in events] == list(range(1, 101))
    assert [e.parent_id for e in events[1:]] == [e.id for e in events[:-1]]
    assert record_of(first, "s").metadata.last_sequence == 100
    for name in "abcd":  # each writer's appends, once each and in its order
        assert [c for c in contents(events) if c.startswith(name)] == [
            f"{name}-{n}" for n in range(25)
        ]


def test_expected_last_sequence_is_checked_against_the_database_not_the_store(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = two_stores
    create(first, "s", [user("a")])
    assert record_of(second, "s").metadata.last_sequence == 1
    append(first, "s", [reply("b")], expected_last_sequence=1)
    with pytest.raises(SequenceConflict) as conflict:
        append(second, "s", [user("stale")], expected_last_sequence=1)
    assert (conflict.value.expected, conflict.value.actual) == (1, 2)
    assert contents(all_events(first, "s")) == ["a", "b"]


def test_data_and_pending_purges_survive_reopening(dsn: str) -> None:
    store = PostgresStore.open(dsn)
    create(store, "kept", [user("a"), reply("b")])
    create(store, "gone", [user(str(n)) for n in range(30)])
    delete(store, "gone")
    assert purge(store, 10) == 10
    store.close()

    reopened = PostgresStore.open(dsn)
    try:
        assert contents(all_events(reopened, "kept")) == ["a", "b"]
        assert [purge(reopened, 15), purge(reopened, 15)] == [15, 5]
        assert reopened.session_count() == 1
    finally:
        reopened.close()


def schema_snapshot(dsn: str) -> list[Any]:
    with psycopg.connect(dsn) as connection:
        return connection.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = %s ORDER BY 1, 2",
            (SCHEMA,),
        ).fetchall()


def test_a_newer_schema_is_refused_untouched(dsn: str) -> None:
    newer = SCHEMA_VERSION + 1
    PostgresStore.open(dsn).close()
    with psycopg.connect(dsn) as connection:
        connection.execute(f"UPDATE {SCHEMA}.schema_version SET version = %s", (newer,))
    before = schema_snapshot(dsn)
    with pytest.raises(StoreVersionError, match=rf"schema version {newer}.*Upgrade copilotd"):
        PostgresStore.open(dsn)
    assert schema_snapshot(dsn) == before
    with psycopg.connect(dsn) as connection:
        row = connection.execute(f"SELECT version FROM {SCHEMA}.schema_version").fetchone()
    assert row == (newer,)


def test_a_version_1_store_gains_the_lease_table(dsn: str) -> None:
    PostgresStore.open(dsn).close()
    with psycopg.connect(dsn) as connection:
        connection.execute(f"DROP TABLE {SCHEMA}.turn_leases")
        connection.execute(f"UPDATE {SCHEMA}.schema_version SET version = 1")
    store = PostgresStore.open(dsn)
    try:
        create(store, "s")
        append(store, "s", [user("q")], open_turn=("t", "m"))
        assert store.renew_leases() == 1
    finally:
        store.close()
    with psycopg.connect(dsn) as connection:
        row = connection.execute(f"SELECT version FROM {SCHEMA}.schema_version").fetchone()
    assert row == (SCHEMA_VERSION,)


def test_a_version_2_store_gains_the_fork_references(dsn: str) -> None:
    PostgresStore.open(dsn).close()
    with psycopg.connect(dsn) as connection:
        connection.execute(f"DROP TABLE {SCHEMA}.log_refs")
        connection.execute(f"UPDATE {SCHEMA}.schema_version SET version = 2")
    store = PostgresStore.open(dsn)
    try:
        create(store, "p", [user("one"), user("two")])
        run(store, lambda writer: writer.fork_session("p", "f", 1, [user("own")]))
        delete(store, "p")
        assert contents(all_events(store, "f")) == ["one", "own"]
        assert purge(store, 100) == 0  # the fork still reads p's log
    finally:
        store.close()
    with psycopg.connect(dsn) as connection:
        row = connection.execute(f"SELECT version FROM {SCHEMA}.schema_version").fetchone()
        refs = connection.execute(f"SELECT refs FROM {SCHEMA}.log_refs").fetchall()
    assert (row, refs) == ((SCHEMA_VERSION,), [(1,)])


def test_a_copilotd_schema_that_is_no_store_is_refused_untouched(dsn: str) -> None:
    with psycopg.connect(dsn) as connection:
        connection.execute(f"CREATE SCHEMA {SCHEMA}")
        connection.execute(f"CREATE TABLE {SCHEMA}.theirs (x int)")
    with pytest.raises(StoreCorrupt, match="not a copilotd store"):
        PostgresStore.open(dsn)
    assert schema_snapshot(dsn) == [("theirs", "x")]


def plan(connection: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> str:
    rows = connection.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, params).fetchone()
    assert rows is not None
    return json.dumps(rows[0])


def read_buffers(plan_json: str) -> int:
    top = json.loads(plan_json)[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


def test_reads_and_purges_are_index_range_scans_at_100000_sessions(dsn: str) -> None:
    store = PostgresStore.open(dsn)
    try:
        create(store, "small", [user(str(n)) for n in range(5)])
        small_page = _first_page_buffers(dsn)
        with psycopg.connect(dsn) as connection:
            # Raw rows, for speed: the plans depend on the keys, not on the records.
            connection.execute(
                f"INSERT INTO {SCHEMA}.sessions SELECT 's' || n, 1000 + n, n * 1000, 3,"
                " n % 1000 = 0, 10, ''::bytea FROM generate_series(1, 100000) AS n"
            )
            connection.execute(
                f"INSERT INTO {SCHEMA}.events SELECT 1000 + n / 10, n % 10, 'e' || n, 1, 'x'::bytea"
                " FROM generate_series(1, 200000) AS n"
            )
            connection.execute(f"INSERT INTO {SCHEMA}.purge_queue VALUES (1005)")
            # Leases of many turns running on other daemons: recovery must not scan them.
            connection.execute(
                f"INSERT INTO {SCHEMA}.turn_leases SELECT 's' || n, 'other', 't', now()"
                " FROM generate_series(1, 100000, 7) AS n"
            )
            connection.execute(f"ANALYZE {SCHEMA}.turn_leases")
            connection.execute(f"ANALYZE {SCHEMA}.sessions")
            connection.execute(f"ANALYZE {SCHEMA}.events")
        with psycopg.connect(dsn) as connection:
            plans = {
                "first page": plan(connection, LIST_FIRST_PAGE, (51,)),
                "next page": plan(connection, LIST_NEXT_PAGE, (50_000_000, "s50000", 51)),
                "open turns": plan(connection, OPEN_TURNS, ("owner",)),
                "events": plan(connection, events_query("event", False), (1500, 2, 8, 100)),
                "newest": plan(connection, events_query("event", True), (1500, 0, 10**9, 5)),
                "by id": plan(connection, FIND_EVENT, (1500, "e15003")),
                "purge": plan(connection, PURGE_STEP, (1005, 1005, 200)),
            }
            connection.rollback()  # the purge step's plan ran it
        for name, text in plans.items():
            assert "Seq Scan" not in text, (name, text)
            assert '"Sort"' not in text, (name, text)
        assert "sessions_recency" in plans["first page"]
        assert '"Scan Direction": "Backward"' in plans["first page"]
        assert "sessions_recency" in plans["next page"]
        assert "sessions_attention" in plans["open turns"]
        for name in ("events", "newest", "purge"):
            assert "events_pkey" in plans[name], name
        assert "events_ids" in plans["by id"]
        # A first page at 100,000 sessions reads about what it reads at one.
        assert read_buffers(plans["first page"]) <= small_page + 10
        assert listed_ids(store.list_sessions(limit=1)[0]) == ["small"]
    finally:
        store.close()


def _first_page_buffers(dsn: str) -> int:
    with psycopg.connect(dsn) as connection:
        return read_buffers(plan(connection, LIST_FIRST_PAGE, (51,)))


def test_an_unreachable_server_is_named_without_the_password(tmp_path: Any) -> None:
    secret = "unreachable-secret-pw"
    with pytest.raises(StoreUnreachable) as refused:
        PostgresStore.open(f"host={tmp_path} dbname=copilotd user=app password={secret}")
    message = str(refused.value)
    assert f"host={tmp_path} dbname=copilotd user=app" in message
    assert "Check that the server runs" in message
    assert secret not in message


def test_a_wrong_password_is_refused_without_showing_it(
    postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    wrong = "not-" + APP_PASSWORD
    dsn = postgres_cluster.dsn(postgres_database, user=APP_ROLE, password=wrong)
    with pytest.raises(StoreUnreachable, match="password authentication failed") as refused:
        PostgresStore.open(dsn)
    assert wrong not in str(refused.value)
    right = postgres_cluster.dsn(postgres_database, user=APP_ROLE, password=APP_PASSWORD)
    PostgresStore.open(right).close()


WHERE = "postgresql host=db port=5433 dbname=c user=u"


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            "host=db port=5433 dbname=c user=u password=pw1234",
            "postgresql host=db port=5433 dbname=c user=u",
        ),
        (
            "postgresql://u:pw1234@db:5433/c?sslmode=require",
            "postgresql host=db port=5433 dbname=c user=u",
        ),
        ("not a dsn '", "postgresql (an unreadable DSN)"),
    ],
)
def test_describing_a_dsn_leaves_the_password_out(dsn: str, shown: str) -> None:
    assert describe_dsn(dsn) == shown


def test_backup_points_to_pg_dump(dsn: str) -> None:
    from copilotd.store import BackupUnsupported

    store = PostgresStore.open(dsn)
    try:
        with pytest.raises(BackupUnsupported, match=f"pg_dump --schema={SCHEMA}"):
            store.copy_to(1)
    finally:
        store.close()


def test_an_import_cut_short_is_discarded_at_the_next_opening(dsn: str) -> None:
    store = PostgresStore.open(dsn)
    staging = run(store, lambda w: w.begin_import(SessionMetadata(session_id="s")))
    run(store, lambda w: w.stage_events(staging, [user(str(n)) for n in range(4)]))
    store.close()  # as a crash would: neither committed nor discarded

    reopened = PostgresStore.open(dsn)
    try:
        assert purge(reopened, 10) == 4
        with pytest.raises(ValueError):
            run(reopened, lambda w: w.commit_import(staging, "s", replace=False))
        assert reopened.get_session("s") is None
    finally:
        reopened.close()


def test_the_factory_opens_postgresql_by_dsn(dsn: str) -> None:
    store = open_store("postgresql", None, dsn=dsn)
    try:
        assert isinstance(store, PostgresStore)
        create(store, "s")
        assert store.session_count() == 1
    finally:
        store.close()


def _fork(writer: StoreWriter, *, source: str, session_id: str) -> object:
    return writer.fork_session(source, session_id, 5, [])


def test_two_daemons_forking_and_deleting_at_once_lose_no_reference(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    """One store forks a parent while the other deletes it (and forks of it): however
    they interleave, every fork made reads its whole history, and the shared events
    are purged exactly when the last session reading them is gone."""
    first, second = two_stores
    rounds = 12
    for n in range(rounds):
        create(first, f"p{n}", [user(f"m{n}-{k}") for k in range(5)])
        run(first, functools.partial(_fork, source=f"p{n}", session_id=f"base{n}"))
    start = threading.Barrier(2)
    failures: list[BaseException] = []
    made: list[str] = []

    def forker() -> None:
        try:
            start.wait()
            for n in range(rounds):
                for source in (f"p{n}", f"base{n}"):
                    fork = functools.partial(_fork, source=source, session_id=f"{source}-f{n}")
                    (result,) = first.write_batch([fork])
                    if not isinstance(result, SessionNotFound):
                        assert not isinstance(result, Exception), result
                        made.append(f"{source}-f{n}")
        except BaseException as error:
            failures.append(error)

    def deleter() -> None:
        try:
            start.wait()
            for n in range(rounds):
                delete(second, f"p{n}")
                delete(second, f"base{n}")
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=forker), threading.Thread(target=deleter)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    purge(first, 100_000)
    for fork in made:
        number = fork.rsplit("-f", 1)[1]
        assert contents(all_events(first, fork)) == [f"m{number}-{k}" for k in range(5)]
    for fork in made:
        delete(first, fork)
    assert purge(first, 100_000) == 5 * len({fork.rsplit("-f", 1)[1] for fork in made})
    assert purge(first, 100_000) == 0


def test_a_deletion_waits_for_a_fork_of_its_session_to_commit(
    dsn: str, two_stores: tuple[PostgresStore, PostgresStore]
) -> None:
    """A fork holds its source's row until it commits: another daemon deleting the
    source meanwhile waits, then finds the fork's reference and keeps the events."""
    first, second = two_stores
    create(first, "p", [user(f"m{k}") for k in range(5)])
    forked, release = threading.Event(), threading.Event()

    def fork_and_hold(writer: StoreWriter) -> object:
        made = writer.fork_session("p", "f", 5, [])
        forked.set()
        assert release.wait(30)
        return made

    forking = threading.Thread(target=lambda: first.write_batch([fork_and_hold]))
    forking.start()
    assert forked.wait(30)
    deleting = threading.Thread(target=lambda: delete(second, "p"))
    deleting.start()
    # Until the deletion either finishes or is seen waiting for the fork's lock.
    while deleting.is_alive() and not _waiting_for_a_lock(dsn):
        deleting.join(0.01)
    release.set()
    forking.join(30)
    deleting.join(30)
    purge(first, 100_000)
    assert contents(all_events(first, "f")) == [f"m{k}" for k in range(5)]
    delete(first, "f")
    assert purge(first, 100_000) == 5


def _waiting_for_a_lock(dsn: str) -> bool:
    with psycopg.connect(dsn) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            f" AND query LIKE 'DELETE FROM {SCHEMA}.sessions%%'"
        ).fetchone()
    return row is not None and row[0] > 0
