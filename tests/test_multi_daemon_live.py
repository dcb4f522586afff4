"""Live deltas across daemons on one PostgreSQL store: a subscriber attached to
another daemon than the one running the turn sees the answer streamed, before the
stored message it belongs to and never after it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import events_pb2
from copilotd.sessions.live import split_text
from tests.support.daemon_process import DaemonProcess
from tests.test_multi_daemon import WAIT, channel_to, events_of, start_daemons, stub
from tests.test_multi_daemon import dsn as dsn  # a fixture


@pytest.fixture
def pair(short_tmp: Path, dsn: str) -> Iterator[list[DaemonProcess]]:
    daemons = start_daemons(short_tmp, dsn, 2, "0.05")
    yield daemons
    for daemon in daemons:
        daemon.kill()


def test_text_is_split_on_character_boundaries_within_the_limit() -> None:
    text = "é" * 5 + "x" * 3 + "🙂" * 2
    pieces = split_text(text, limit=4)
    assert "".join(pieces) == text
    assert all(0 < len(piece.encode()) <= 4 for piece in pieces)
    assert split_text("") == []


async def test_deltas_of_a_turn_reach_subscribers_of_another_daemon_in_order(
    pair: list[DaemonProcess],
) -> None:
    a, b = (channel_to(daemon) for daemon in pair)
    try:
        created = await stub(a).CreateSession(pb.CreateSessionRequest())
        session_id = created.session.session_id
        on_b = events_of(
            stub(b).StreamEvents(pb.StreamEventsRequest(session_id=session_id, after_sequence=0))
        )
        answered = asyncio.ensure_future(
            stub(a).SendMessageAndWait(
                pb.SendMessageAndWaitRequest(session_id=session_id, prompt="tell me a story"),
                timeout=WAIT,
            )
        )

        async def until_turn_end() -> list[events_pb2.SessionEvent]:
            seen = []
            async for event in on_b:
                seen.append(event)
                if event.type == "assistant.turn_end":
                    return seen
            raise AssertionError("the stream ended before the turn did")

        seen = await asyncio.wait_for(until_turn_end(), WAIT)
        answer = (await asyncio.wait_for(answered, WAIT)).answer
        stored_at = next(n for n, e in enumerate(seen) if e.id == answer.id)
        deltas = [
            (n, e.assistant_message_delta)
            for n, e in enumerate(seen)
            if e.type == "assistant.message_delta"
        ]
        assert deltas, "no delta reached the subscriber on the other daemon"
        # Each delta comes before the stored message it belongs to, and never after.
        assert all(n < stored_at for n, _ in deltas)
        assert {delta.message_id for _, delta in deltas} == {answer.assistant_message.message_id}
        # Best-effort, but never reordered: what arrived is the answer's beginning.
        streamed = "".join(delta.delta_content for _, delta in deltas)
        assert answer.assistant_message.content.startswith(streamed)
        # The stored events stay whole and in order around them.
        persisted = [e.sequence for e in seen if not e.ephemeral]
        assert persisted == list(range(1, len(persisted) + 1))
    finally:
        await a.close()
        await b.close()
