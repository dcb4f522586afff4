"""The cached model contexts of idle sessions stay within a memory budget.

Driven in-process: the session core over a real LMDB store in a temp dir,
its real group committer and the offline model, which recalls the earlier
user messages it was given, so its answer shows the context a turn had.
The memory is measured from the sessions' states, not taken from the
budget's own count.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from copilot_client.proto.v1 import copilot_pb2
from copilotd import events as ev
from copilotd.providers import ChatMessage, ProviderRegistry
from copilotd.sessions.context_window import ContextWindow, context_messages, message_bytes
from copilotd.sessions.idle_contexts import IdleContexts
from copilotd.sessions.service import SessionService
from copilotd.store import LmdbStore
from copilotd.store.committer import GroupCommitter

BUDGET = 256 * 1024
FILLER = "x" * (24 * 1024)
SESSIONS = 24
TURNS = 2


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[SessionService]:
    store = LmdbStore.open(tmp_path / "store")
    committer = GroupCommitter(store)
    committer.start()
    service = SessionService(
        store, committer, ProviderRegistry(), version="test", idle_context_budget=BUDGET
    )
    try:
        yield service
    finally:
        await service.shutdown()
        await committer.close()
        store.close()


async def converse(service: SessionService, session_id: str, prompt: str) -> str:
    """Send ``prompt`` and wait for the end of its turn; returns the answer."""
    subscription = service.fanout.subscribe(session_id)
    try:
        sent, _ = await service.send_message(session_id, prompt, "")
        answer = ""
        while True:
            for event in await subscription.next_batch():
                if event.type == ev.ASSISTANT_MESSAGE:
                    answer = event.assistant_message.content
                elif (
                    event.type == ev.ASSISTANT_TURN_END
                    and event.assistant_turn_end.user_message_id == sent.id
                ):
                    return answer
    finally:
        service.fanout.unsubscribe(subscription)


def idle_window_bytes(service: SessionService) -> int:
    """The memory the cached windows of idle sessions hold, counted message by message."""
    return sum(
        message_bytes(message)
        for state in service._states.values()
        if state.context is not None and state.turn is None
        for message in state.context.messages
    )


async def test_idle_contexts_stay_within_the_budget(service: SessionService) -> None:
    peak = 0
    for index in range(SESSIONS):
        session_id = f"s{index}"
        await service.create_session(copilot_pb2.SessionConfig(session_id=session_id))
        for turn in range(TURNS):
            await converse(service, session_id, f"{session_id} turn {turn} {FILLER}")
            measured = idle_window_bytes(service)
            assert measured <= BUDGET
            assert service.idle_contexts.bytes == measured
            peak = max(peak, measured)

    cached = sum(1 for state in service._states.values() if state.context is not None)
    unbounded = SESSIONS * TURNS * 2 * len(FILLER)  # prompts and answers, at least
    assert service.idle_contexts.dropped >= SESSIONS - cached > 0
    assert unbounded > 4 * BUDGET
    print(
        f"\nFIGURES idle contexts: {SESSIONS} sessions x {TURNS} turns of 24 KiB prompts; "
        f"budget {BUDGET} bytes, peak {peak} bytes of idle windows, {cached} windows "
        f"still cached, {service.idle_contexts.dropped} dropped (unbounded: over "
        f"{unbounded} bytes)"
    )


async def test_a_dropped_context_is_reloaded_whole(service: SessionService) -> None:
    await service.create_session(copilot_pb2.SessionConfig(session_id="first"))
    for turn in range(3):
        await converse(service, "first", f"first-{turn} {FILLER}")
    assert service._states["first"].context is not None
    others = 0
    while service._states["first"].context is not None:
        others += 1
        assert others < 50, "the first session's context was never dropped"
        session_id = f"other{others}"
        await service.create_session(copilot_pb2.SessionConfig(session_id=session_id))
        await converse(service, session_id, f"{session_id} {FILLER}")

    answer = await converse(service, "first", "first-3 what did I say?")

    # The turn had the whole history: the offline model counts and quotes it.
    assert "(3 earlier messages)" in answer
    for turn in range(3):
        assert f'"first-{turn} xxx' in answer
    window = service._states["first"].context
    assert window is not None
    stored = context_messages(service.store.read_events("first", limit=1000))
    assert [(m.role, m.content) for m in window.messages] == [(m.role, m.content) for m in stored]
    assert len(stored) == 8


def window(*sizes: int) -> ContextWindow:
    return ContextWindow([ChatMessage("user", "m" * size) for size in sizes])


class Holder:
    def __init__(self, context: ContextWindow | None) -> None:
        self.context = context


def test_least_recently_idle_windows_go_first() -> None:
    a, b, c = Holder(window(1000)), Holder(window(1000)), Holder(window(1000))
    size = window(1000).memory_bytes
    contexts = IdleContexts(budget_bytes=2 * size)
    contexts.park("a", a)
    contexts.park("b", b)
    contexts.take("a")  # a's next turn took it...
    contexts.park("a", a)  # ...and gave it back: now the most recent
    contexts.park("c", c)
    assert (a.context is not None, b.context is None, c.context is not None) == (True, True, True)
    assert (len(contexts), contexts.bytes, contexts.dropped) == (2, 2 * size, 1)
    contexts.take("a")
    assert (len(contexts), contexts.bytes) == (1, size)
    contexts.park("none", Holder(None))  # nothing cached: nothing counted
    assert len(contexts) == 1
    huge = Holder(window(3000))
    contexts.park("huge", huge)  # larger than the whole budget: dropped at once
    assert huge.context is None and c.context is not None
