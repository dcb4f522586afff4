"""A queued message whose turn cannot start (no space) is kept, first in line, and runs later.

The core is driven in-process over a real LMDB store whose commits can be made
to fail, as a full disk would make them: the one fault no daemon-level test
can time precisely.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from copilot_client.proto.v1 import copilot_pb2
from copilotd import events as ev
from copilotd.providers import ProviderRegistry
from copilotd.sessions.service import SessionService
from copilotd.store import LmdbStore, StoreFull, StoreWriter
from copilotd.store.committer import GroupCommitter


class FillingStore(LmdbStore):
    """An LMDB store whose next commit fails with StoreFull once armed."""

    armed = False

    def write_batch(self, operations: Sequence[Callable[[StoreWriter], Any]]) -> list[Any]:
        if self.armed:
            self.armed = False
            raise StoreFull("no space left on device (injected)")
        return super().write_batch(operations)


async def test_failed_start_of_a_queued_message_keeps_it_queued(tmp_path: Path) -> None:
    store = FillingStore.open(tmp_path / "store")
    assert isinstance(store, FillingStore)
    committer = GroupCommitter(store)
    committer.start()
    service = SessionService(
        store,
        committer,
        ProviderRegistry(offline_delta_delay=0.01),
        version="test",
    )
    try:
        await service.create_session(copilot_pb2.SessionConfig(session_id="s"))
        updates = service.fanout.subscribe("s")
        first, _ = await service.send_message("s", "first", "")
        second, queued = await service.send_message("s", "second", "")
        assert queued
        # Fail the commit that would start "second", right after "first" ends.
        while True:
            batch = await updates.next_batch()
            if any(
                e.type == ev.ASSISTANT_TURN_END and e.assistant_turn_end.user_message_id == first.id
                for e in batch
            ):
                store.armed = True
                break
        # The start of "second" fails (nothing is published for it): wait for it.
        await asyncio.gather(*service._scheduler._starting)
        assert service.running_turns == 0
        record = store.get_session("s")
        assert record is not None
        assert [p.message_id for p in record.pending] == [second.id]  # still durable, first

        third, queued = await service.send_message("s", "third", "")
        assert queued  # behind "second", which now starts first
        while True:
            batch = await updates.next_batch()
            if any(
                e.type == ev.ASSISTANT_TURN_END and e.assistant_turn_end.user_message_id == third.id
                for e in batch
            ):
                break
        events = store.read_events("s", limit=1000)
        users = [e.id for e in events if e.type == ev.USER_MESSAGE]
        assert users == [first.id, second.id, third.id]
        record = store.get_session("s")
        assert record is not None and list(record.pending) == []
    finally:
        await service.shutdown()
        await committer.close()
        store.close()
