"""Deleting a session that is in use, driven in-process over a real LMDB store.

The daemon tests cover deletion end to end; mutation testing (mutmut, see
docs/reliability.md) cannot see into a daemon process, and left every change
to ``SessionService.delete_session`` alive. So here, in one process: a turn
running, a subscriber watching, a ``send_and_wait`` waiting and a lifecycle
watch open, then the session is deleted. Each must learn of it in its own
way, the turn must stop writing, and the id must be free for a new session
that starts from nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.wire import LIFECYCLE_DELETED
from copilotd import events as ev
from copilotd.errors import SessionNotFoundError
from copilotd.providers import ProviderRegistry
from copilotd.sessions.fanout import Subscription
from copilotd.sessions.service import SessionService
from copilotd.store import LmdbStore
from copilotd.store.committer import GroupCommitter

# Long enough that the turn is still running when the session is deleted.
NEVER_ENDING_DELTA_DELAY = 60.0


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[tuple[SessionService, LmdbStore]]:
    store = LmdbStore.open(tmp_path / "store")
    committer = GroupCommitter(store)
    committer.start()
    core = SessionService(
        store,
        committer,
        ProviderRegistry(offline_delta_delay=NEVER_ENDING_DELTA_DELAY),
        version="test",
    )
    try:
        yield core, store
    finally:
        await core.shutdown()
        await committer.close()
        store.close()


async def everything_until_the_end(feed: Subscription[ev.SessionEvent]) -> list[ev.SessionEvent]:
    """The batches a subscriber gets, until the error that ends its subscription."""
    received: list[ev.SessionEvent] = []
    with pytest.raises(SessionNotFoundError):
        while True:
            received.extend(await feed.next_batch())
    return received


def queued_ids(store: LmdbStore, session_id: str) -> list[str]:
    record = store.get_session(session_id)
    assert record is not None
    return [pending.message_id for pending in record.pending]


async def test_deleting_a_session_in_use(core: tuple[SessionService, LmdbStore]) -> None:
    service, store = core
    await service.create_session(pb.SessionConfig(session_id="busy"))
    lifecycle = service.watch_lifecycle([])
    assert await anext(lifecycle) == []  # live from here
    await service.send_message("busy", "running", "", message_id="running")
    feed = service.fanout.subscribe("busy")
    waiting = asyncio.ensure_future(
        service.send_message_and_wait("busy", "queued", "", message_id="queued")
    )
    while "queued" not in queued_ids(store, "busy"):
        await feed.next_batch()  # until the queue's commit is seen
    last = service.get_session("busy")
    turn = service._states["busy"].turn
    assert last.turn_running and turn is not None and turn.task is not None

    await service.delete_session("busy")

    received = await everything_until_the_end(feed)
    terminal = received[-1]
    assert terminal.type == ev.SESSION_DELETED
    assert terminal.session_deleted.session_id == "busy"
    assert terminal.sequence == last.last_sequence  # where the subscriber's log ends
    assert terminal.parent_id == last.last_event_id
    assert turn.task.done(), "the deleted session's turn still runs"
    async with asyncio.timeout(30):  # a guard: an unanswered waiter would hang here
        with pytest.raises(SessionNotFoundError, match="busy"):
            await waiting
    with pytest.raises(SessionNotFoundError):
        service.get_session("busy")
    deleted = [
        (event.type, event.session_id) for batch in [await anext(lifecycle)] for event in batch
    ]
    assert (LIFECYCLE_DELETED, "busy") in deleted
    await lifecycle.aclose()

    # The id is free, and the new session owes nothing to the old one: no
    # running turn, no queue, its own log.
    await service.create_session(pb.SessionConfig(session_id="busy"))
    fresh = service.get_session("busy")
    assert (fresh.turn_running, fresh.last_sequence) == (False, 1)
    message, queued = await service.send_message("busy", "again", "")
    assert not queued and message.sequence == 2
