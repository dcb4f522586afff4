"""PostgreSQL's own full-text search, against real daemons on the private cluster: the
entries are written in the events' transaction, so every daemon finds a commit at once
and a SIGKILL never leaves the log and the index apart; forks, rewinds, the upgrade's
backfill and the rebuild command."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from copilot_client import InvalidArgumentError
from copilotd import events as ev
from copilotd.cli.main import STORE_DSN_ENV
from copilotd.config import CONFIG_ENV
from copilotd.store import SessionMetadata
from copilotd.store.postgres_schema import SCHEMA
from copilotd.store.postgres_store import PostgresStore
from tests.support.cli import copilotd, ok
from tests.support.daemon_process import DaemonProcess
from tests.support.postgres import APP_PASSWORD, APP_ROLE, PostgresCluster
from tests.test_search import client_of, found, places, say

# A search session's lifetime bound while it waits on a lock the test holds.
HELD_TIMEOUT = 60.0


@pytest.fixture
def dsn(postgres_cluster: PostgresCluster, postgres_database: str) -> str:
    return postgres_cluster.dsn(postgres_database, user=APP_ROLE, password=APP_PASSWORD)


@pytest.fixture
def pg_daemon(short_tmp: Path, dsn: str) -> Iterator[DaemonProcess]:
    process = DaemonProcess(short_tmp, extra_env={STORE_DSN_ENV: dsn}).start()
    yield process
    process.kill()


async def test_a_commit_through_one_daemon_is_found_through_another_at_once(
    short_tmp: Path, dsn: str
) -> None:
    """No notification is awaited: the entry was committed with the event."""
    first = DaemonProcess(short_tmp / "a", extra_env={STORE_DSN_ENV: dsn}).start()
    second = DaemonProcess(short_tmp / "b", extra_env={STORE_DSN_ENV: dsn}).start()
    try:
        async with client_of(first) as writer, client_of(second) as reader:
            session = await writer.create_session(session_id="across")
            await session.send("the manatee swims between daemons")
            assert ("across", 2, "user.message") in places(await found(reader, "manatee"))
            await writer.delete_session("across")
            assert await found(reader, "manatee") == []
        # Neither keeps a SQLite index: the database is the index.
        assert not (first.data_dir / "search.sqlite3").exists()
    finally:
        first.kill()
        second.kill()


async def wait_until_blocked(
    connection: psycopg.AsyncConnection[Any], sent: asyncio.Task[str]
) -> None:
    """Until a daemon's write waits on the test's lock of the entries (or the send ends)."""
    async with asyncio.timeout(HELD_TIMEOUT):
        while not sent.done():
            waiting = await (
                await connection.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                    (f"{SCHEMA}.search_entries",),
                )
            ).fetchone()
            if waiting is not None and waiting[0]:
                return
            # The database offers no event for "a lock is awaited": look again.
            await asyncio.sleep(0.05)


async def test_a_sigkill_while_indexing_waits_leaves_log_and_index_agreeing(
    pg_daemon: DaemonProcess, dsn: str
) -> None:
    """The daemon is killed while its write of a message waits to index it: either the
    message was committed and is found, or neither. Indexing after the commit (in a
    transaction of its own) would leave a committed message unfound."""
    async with client_of(pg_daemon) as client:
        session = await client.create_session(session_id="held")
        async with (
            await psycopg.AsyncConnection.connect(dsn) as holder,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as watch,
            holder.transaction(),
        ):
            await holder.execute(f"LOCK TABLE {SCHEMA}.search_entries IN SHARE ROW EXCLUSIVE MODE")
            sent = asyncio.create_task(session.send("the quetzal flies at the kill"))
            await wait_until_blocked(watch, sent)
            pg_daemon.kill()
            # The lock is released here: the dead daemon's transaction ends, never committed.
        committed = sent.done() and sent.exception() is None
        if not sent.done():
            sent.cancel()
    pg_daemon.start()
    async with client_of(pg_daemon) as client:
        logged = any(
            "quetzal" in (event.data.content or "")
            for event in await client.get_messages("held")
            if event.type_name == "user.message"
        )
        hits = await found(client, "quetzal")
    assert logged == bool(hits), (logged, places(hits))
    assert not committed or logged


async def test_forks_find_what_they_inherit_and_rewinds_are_per_session(
    pg_daemon: DaemonProcess,
) -> None:
    async with client_of(pg_daemon) as client:
        await say(client, "parent", "the ocelot at first", "the ocelot again")
        await client.fork_session("parent", "child")
        child = await client.resume_session("child")
        await child.send_and_wait("the ocelot in the fork only")
        hits = await found(client, "ocelot")
        # Inherited events are found under the fork at their sequences; its own after.
        assert {(s, q) for s, q, _ in places(hits) if s == "child"} >= {("child", 2), ("child", 6)}
        assert len([h for h in hits if h.session_id == "child"]) == 6
        assert len([h for h in hits if h.session_id == "parent"]) == 4

        # The parent's rewind cuts its own history, not the fork's inherited copy.
        parent = await client.resume_session("parent")
        await parent.rewind(5)  # the first turn's end
        assert {h.sequence for h in await found(client, "ocelot") if h.session_id == "parent"} == {
            2,
            4,
        }
        marked = [
            h
            for h in (await client.search_sessions("again", include_rewound=True)).hits
            if h.session_id == "parent"
        ]
        assert {(h.sequence, h.rewound) for h in marked} == {(6, True), (8, True)}
        assert len([h for h in await found(client, "ocelot") if h.session_id == "child"]) == 6

        # Deleting the parent leaves the fork whole, in search too.
        await client.delete_session("parent")
        hits = await found(client, "ocelot")
        assert {h.session_id for h in hits} == {"child"} and len(hits) == 6


@pytest.mark.parametrize(
    ("query", "explains"),
    [
        ("NEAR(a b)", "use a phrase, or both words"),
        ("walrus NEAR(a b)", "use a phrase, or both words"),
        ("(" * 51 + "walrus" + ")" * 51, "nest deeper than 50"),
        ("'walrus' | !x", 'unexpected "\'"'),  # tsquery syntax is not passed through
    ],
)
async def test_queries_postgresql_cannot_run_are_refused_with_a_way_out(
    pg_daemon: DaemonProcess, query: str, explains: str
) -> None:
    async with client_of(pg_daemon) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            await client.search_sessions(query)
        assert caught.value.reason == "ERROR_REASON_INVALID_SEARCH_QUERY"
        assert explains in str(caught.value)


async def test_an_older_store_is_indexed_at_upgrade_and_rebuilt_on_request(
    pg_daemon: DaemonProcess, dsn: str
) -> None:
    async with client_of(pg_daemon) as client:
        await say(client, "before", "the wombat predates the index")
        await client.fork_session("before", "forked")
    pg_daemon.kill()
    # The store as version 4 left it: no search tables.
    with psycopg.connect(dsn, autocommit=True) as connection:
        for table in ("search_entries", "search_spans", "search_cuts"):
            connection.execute(f"DROP TABLE {SCHEMA}.{table}")
        connection.execute(f"UPDATE {SCHEMA}.schema_version SET version = 4")
    pg_daemon.start()
    async with client_of(pg_daemon) as client:
        assert {(h.session_id, h.sequence) for h in await found(client, "wombat")} == {
            ("before", 2),
            ("before", 4),
            ("forked", 2),
            ("forked", 4),
        }
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f"DELETE FROM {SCHEMA}.search_entries")
        assert await found(client, "wombat") == []
        rebuilt = ok(copilotd(pg_daemon, "search-index", "rebuild", "--store-dsn", dsn))
        assert "rebuilt from" in rebuilt
        assert len(await found(client, "wombat")) == 4

        # Without --store-dsn, the config file names the store, as for copilotd serve.
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f"DELETE FROM {SCHEMA}.search_entries")
        config = pg_daemon.root / "store.toml"
        config.touch(mode=0o600)  # it holds the password
        config.write_text(f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n')
        from_config = {STORE_DSN_ENV: "", CONFIG_ENV: str(config)}
        rebuilt = ok(copilotd(pg_daemon, "search-index", "rebuild", env=from_config))
        assert "rebuilt from" in rebuilt
        assert len(await found(client, "wombat")) == 4


def test_purging_a_deleted_log_removes_its_entries(dsn: str) -> None:
    store = PostgresStore.open(dsn, max_connections=2)
    try:
        message = ev.make_event(ev.USER_MESSAGE, content="the dodo")
        store.write_batch(
            [lambda writer: writer.create_session(SessionMetadata(session_id="gone"), [message])]
        )
        store.write_batch([lambda writer: writer.delete_session("gone")])
        with psycopg.connect(dsn) as connection:
            count = f"SELECT count(*) FROM {SCHEMA}.search_entries"
            assert connection.execute(count).fetchone() == (1,)  # until the purge
            store.write_batch([lambda writer: writer.purge_deleted(100)])
            assert connection.execute(count).fetchone() == (0,)
    finally:
        store.close()


async def test_a_message_too_long_for_a_tsvector_is_searchable_in_its_first_part(
    pg_daemon: DaemonProcess,
) -> None:
    """900 kB of distinct words make a 1.6 MB tsvector, past PostgreSQL's 1 MB: the
    turn still commits, and the message is found by its first 100,000 characters."""
    words = " ".join(f"w{number:06d}" for number in range(100_000))
    async with client_of(pg_daemon) as client:
        await say(client, "long", words)
        assert ("long", 2, "user.message") in places(await found(client, "w000001"))
        assert await found(client, "w099999") == []
