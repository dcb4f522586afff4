"""A daemon on PostgreSQL reads the store off its event loop: a query held up in the
database (here by a lock the test holds) holds up that call alone, never the others."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilotd.store.postgres_schema import SCHEMA
from tests.support.daemon_process import DaemonProcess
from tests.test_multi_daemon import WAIT, channel_to, start_daemons, stub
from tests.test_multi_daemon import dsn as dsn  # a fixture

# The bound of a call that must not wait for the lock: far more than a ping takes.
UNBLOCKED = 10.0


@pytest.fixture
def one(short_tmp: Path, dsn: str) -> Iterator[DaemonProcess]:
    [daemon] = start_daemons(short_tmp, dsn, 1, "0.01")
    yield daemon
    daemon.kill()


def waiting_on_a_lock(connection: psycopg.Connection[tuple[int]]) -> int:
    row = connection.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    assert row is not None
    return row[0]


async def lock_waited_for(
    watcher: psycopg.Connection[tuple[int]], call: asyncio.Future[pb.ListSessionsResponse]
) -> None:
    """Until a query waits for a lock: the list's has reached the database (PostgreSQL
    has no event to await for that; it is polled in the database's own time)."""
    while waiting_on_a_lock(watcher) == 0:
        assert not call.done(), "the list did not wait for the lock"
        await asyncio.to_thread(watcher.execute, "SELECT pg_sleep(0.01)")


async def test_a_list_blocked_in_the_database_does_not_block_other_calls(
    one: DaemonProcess, dsn: str
) -> None:
    channel = channel_to(one)
    try:
        created = await stub(channel).CreateSession(pb.CreateSessionRequest())
        with psycopg.connect(dsn) as locker, psycopg.connect(dsn, autocommit=True) as watcher:
            # Held until the transaction ends: every read of the sessions table waits.
            locker.execute(f"LOCK TABLE {SCHEMA}.sessions IN ACCESS EXCLUSIVE MODE")
            listing = asyncio.ensure_future(
                stub(channel).ListSessions(pb.ListSessionsRequest(), timeout=WAIT)
            )
            await asyncio.wait_for(lock_waited_for(watcher, listing), WAIT)
            pong = await stub(channel).Ping(pb.PingRequest(), timeout=UNBLOCKED)
            assert pong.version
            models = await stub(channel).ListModels(pb.ListModelsRequest(), timeout=UNBLOCKED)
            assert models.models
            assert not listing.done()  # still held up in the database, alone
            locker.rollback()  # the lock goes
            listed = await asyncio.wait_for(listing, WAIT)
        assert [s.session_id for s in listed.sessions] == [created.session.session_id]
    finally:
        await channel.close()
