"""The session service's turn outcomes and shutdown, driven in-process over a
real LMDB store.

The daemon tests cover both end to end; mutation testing (mutmut, see
docs/reliability.md) cannot see into a daemon process and left changes to
how ``send_message_and_wait`` is answered and to ``SessionService.shutdown``
alive. These tests see them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilotd import events as ev
from copilotd.errors import ShuttingDownError
from copilotd.providers import ProviderRegistry
from copilotd.sessions.fanout import Subscription
from copilotd.sessions.service import SessionService
from copilotd.store import LmdbStore
from copilotd.store.committer import GroupCommitter

Core = tuple[SessionService, LmdbStore]
# A turn of the offline model: about 6 deltas, each this long.
QUICK = 0.001
NEVER_ENDING = 60.0


@pytest.fixture
def core(tmp_path: Path) -> Callable[[float], AbstractAsyncContextManager[Core]]:
    @asynccontextmanager
    async def running(delta_delay: float) -> AsyncIterator[Core]:
        store = LmdbStore.open(tmp_path / "store")
        committer = GroupCommitter(store)
        committer.start()
        service = SessionService(
            store, committer, ProviderRegistry(offline_delta_delay=delta_delay), version="test"
        )
        try:
            await service.create_session(pb.SessionConfig(session_id="s"))
            yield service, store
        finally:
            await service.shutdown()
            await committer.close()
            store.close()

    return running


async def test_each_waiter_gets_its_own_turn_as_stored(
    core: Callable[[float], AbstractAsyncContextManager[Core]],
) -> None:
    async with core(QUICK) as (service, store):
        outcomes = await asyncio.gather(
            service.send_message_and_wait("s", "first", "", message_id="m1"),
            service.send_message_and_wait("s", "second", "", message_id="m2"),
        )
        stored = store.read_events("s", limit=100)
        for outcome, prompt in zip(outcomes, ["first", "second"], strict=True):
            assert outcome.message_id == prompt.replace("first", "m1").replace("second", "m2")
            assert outcome.answer is not None and outcome.error is None
            assert f'"{prompt}"' in outcome.answer.assistant_message.content
            assert outcome.answer in stored and outcome.turn_end in stored
            assert outcome.turn_end.type == ev.ASSISTANT_TURN_END
            assert outcome.turn_end.assistant_turn_end.user_message_id == outcome.message_id
            assert (
                outcome.turn_end.assistant_turn_end.reason
                == ev.TurnEndReason.TURN_END_REASON_COMPLETED
            )
        state = service.get_session("s")
        assert state.last_sequence == stored[-1].sequence and not state.turn_running


async def ended_with(feed: Subscription[ev.SessionEvent]) -> BaseException:
    """The error that ends ``feed``, after whatever it delivers first."""
    with pytest.raises(ShuttingDownError) as caught:
        while True:
            await feed.next_batch()
    return caught.value


async def test_shutdown_interrupts_the_turn_keeps_the_queue_and_refuses_more(
    core: Callable[[float], AbstractAsyncContextManager[Core]],
) -> None:
    async with core(NEVER_ENDING) as (service, store):
        await service.send_message("s", "running", "", message_id="running")
        feed = service.fanout.subscribe("s")
        waiting = asyncio.ensure_future(
            service.send_message_and_wait("s", "queued", "", message_id="queued")
        )
        while not (record := store.get_session("s")) or not record.pending:
            await feed.next_batch()  # until the queue's commit is seen
        lifecycle = service.watch_lifecycle([])
        assert await anext(lifecycle) == []

        await service.shutdown()

        # The running turn ends with a persisted "interrupted" marker.
        last = store.read_events("s", limit=1, newest_first=True)[0]
        assert last.type == ev.ASSISTANT_TURN_END
        assert last.assistant_turn_end.user_message_id == "running"
        assert last.assistant_turn_end.reason == ev.TurnEndReason.TURN_END_REASON_INTERRUPTED
        # The queued message stays queued (it runs after a restart); its waiter is told.
        record = store.get_session("s")
        assert record is not None and [p.message_id for p in record.pending] == ["queued"]
        async with asyncio.timeout(30):  # a guard: an unanswered waiter would hang here
            with pytest.raises(ShuttingDownError):
                await waiting
        # Live streams end; no new work is taken.
        async with asyncio.timeout(30):
            await ended_with(feed)
            with pytest.raises(ShuttingDownError):
                while True:  # the turn end's update first, then the end
                    await anext(lifecycle)
        with pytest.raises(ShuttingDownError):
            await service.send_message("s", "late", "")


async def test_a_new_session_records_how_it_was_created(
    core: Callable[[float], AbstractAsyncContextManager[Core]],
) -> None:
    async with core(QUICK) as (service, store):
        system = pb.SystemMessage(content="be brief")
        metadata = await service.create_session(
            pb.SessionConfig(session_id="made", model="offline", system_message=system)
        )
        assert (metadata.session_id, metadata.model) == ("made", "offline")
        assert metadata.system_message == system
        [start] = store.read_events("made", limit=10)
        assert start.type == ev.SESSION_START
        assert start.session_start.session_id == "made"
        assert start.session_start.model == "offline"
        assert start.session_start.producer_version == "test"
        record = store.get_session("made")
        assert record is not None and record.metadata.system_message == system
