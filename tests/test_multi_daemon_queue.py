"""The queue of a session is first in, first out across daemons on one PostgreSQL
store, even when the daemon holding it stopped between two turns."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilotd.cli.main import STORE_DSN_ENV
from copilotd.sessions.turns import INTERRUPTED_AT_SHUTDOWN
from copilotd.store.postgres_schema import SCHEMA
from tests.support.daemon_process import DaemonProcess
from tests.test_multi_daemon import (
    COMPLETED,
    INTERRUPTED,
    WAIT,
    channel_to,
    check_log,
    events_of,
    persisted_until,
    stub,
)
from tests.test_multi_daemon import dsn as dsn  # a fixture


def daemon(root: Path, dsn: str, lease_seconds: float, offline_delay: str) -> DaemonProcess:
    root.mkdir()
    config = root / "config.toml"
    config.write_text(f"[store]\nlease_seconds = {lease_seconds}\n")
    os.chmod(config, 0o600)
    process = DaemonProcess(
        root,
        ["--config", str(config), "--offline-delay", offline_delay],
        extra_env={STORE_DSN_ENV: dsn},
    )
    return process.start()


@pytest.fixture
def holder_and_other(short_tmp: Path, dsn: str) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    # The holder's turns are slow enough to stop it in the middle of one. The
    # other renews (and so takes over) only every 200 s: whatever it does with
    # the queue here is the send path's doing, not its periodic recovery's.
    holder = daemon(short_tmp / "a", dsn, 1.5, "0.4")
    other = daemon(short_tmp / "b", dsn, 600, "0.01")
    yield holder, other
    holder.kill()
    other.kill()


async def test_a_message_sent_after_the_holder_stopped_between_turns_waits_for_the_queue(
    holder_and_other: tuple[DaemonProcess, DaemonProcess], dsn: str
) -> None:
    holder, other = holder_and_other
    a, b = channel_to(holder), channel_to(other)
    try:
        # Created through B, which then knows the session with an empty queue.
        created = await stub(b).CreateSession(pb.CreateSessionRequest())
        session_id = created.session.session_id
        on_a = events_of(
            stub(a).StreamEvents(pb.StreamEventsRequest(session_id=session_id, after_sequence=0))
        )
        await stub(a).SendMessage(
            pb.SendMessageRequest(session_id=session_id, prompt="first", message_id="m1")
        )
        for message_id in ("m2", "m3"):
            sent = await stub(a).SendMessage(
                pb.SendMessageRequest(
                    session_id=session_id, prompt=message_id, message_id=message_id
                )
            )
            assert sent.queued
        async for event in on_a:  # m1's turn is streaming on A
            if event.type == "assistant.message_delta":
                break
        # A stops: m1 ends as interrupted, m2 and m3 stay queued in the database,
        # no turn runs, and A's lease is left to expire.
        assert holder.terminate() == 0
        with psycopg.connect(dsn, autocommit=True) as connection:
            expired = connection.execute(
                f"UPDATE {SCHEMA}.turn_leases SET expires_at = now() - interval '1 second'"
                " WHERE session_id = %s",
                (session_id,),
            ).rowcount
        assert expired == 1
        on_b = events_of(
            stub(b).StreamEvents(pb.StreamEventsRequest(session_id=session_id, after_sequence=0))
        )
        late = await stub(b).SendMessage(
            pb.SendMessageRequest(session_id=session_id, prompt="m4", message_id="m4")
        )
        assert late.queued  # behind m2 and m3, though no turn was running
        seen = await asyncio.wait_for(persisted_until(on_b, 4), WAIT)
        check_log(seen)
        ends = [e.assistant_turn_end for e in seen if e.type == "assistant.turn_end"]
        assert [(end.user_message_id, end.reason) for end in ends] == [
            ("m1", INTERRUPTED),
            ("m2", COMPLETED),
            ("m3", COMPLETED),
            ("m4", COMPLETED),
        ]
        assert ends[0].message == INTERRUPTED_AT_SHUTDOWN
    finally:
        await a.close()
        await b.close()
