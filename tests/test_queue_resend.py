"""A message id taken from the queue, its turn not yet committed, is still the session's.

Between the commit that ends a turn and the commit that starts the next queued
message, that message is in neither the queue nor the log: only
``SessionState.turn`` holds it. A client sending it again (with its own id,
after losing the connection) in that window must get the message back, not
queue a copy that would be answered twice. The core is driven in-process over
a real LMDB store, so the window can be entered exactly: the events of the
closing commit reach a subscriber before the next turn's start is written.
"""

from __future__ import annotations

from pathlib import Path

from copilot_client.proto.v1 import copilot_pb2
from copilotd import events as ev
from copilotd.providers import ProviderRegistry
from copilotd.sessions.fanout import Subscription
from copilotd.sessions.service import SessionService
from copilotd.store import LmdbStore
from copilotd.store.committer import GroupCommitter


async def wait_for_turn_end(updates: Subscription[ev.SessionEvent], message_id: str) -> None:
    while True:
        batch = await updates.next_batch()
        if any(
            e.type == ev.ASSISTANT_TURN_END and e.assistant_turn_end.user_message_id == message_id
            for e in batch
        ):
            return


async def test_a_message_resent_while_its_turn_starts_is_not_queued_again(
    tmp_path: Path,
) -> None:
    store = LmdbStore.open(tmp_path / "store")
    committer = GroupCommitter(store)
    committer.start()
    service = SessionService(
        store, committer, ProviderRegistry(offline_delta_delay=0.01), version="test"
    )
    try:
        await service.create_session(copilot_pb2.SessionConfig(session_id="s"))
        updates = service.fanout.subscribe("s")
        first, _ = await service.send_message("s", "first", "")
        _, queued = await service.send_message("s", "second", "", message_id="second-id")
        assert queued
        await wait_for_turn_end(updates, first.id)

        # The window: "second" was taken from the queue, its start not committed.
        state = service._states["s"]
        assert state.turn is not None and state.turn.user_message_id == "second-id"
        assert not state.pending and "second-id" not in state.recent_messages

        again, queued = await service.send_message("s", "second", "", message_id="second-id")
        assert (again.id, again.sequence, queued) == ("second-id", 0, False)
        assert not state.pending

        await wait_for_turn_end(updates, "second-id")
        events = store.read_events("s", limit=1000)
        users = [e.id for e in events if e.type == ev.USER_MESSAGE]
        assert users == [first.id, "second-id"]
        record = store.get_session("s")
        assert record is not None and list(record.pending) == []
    finally:
        await service.shutdown()
        await committer.close()
        store.close()
