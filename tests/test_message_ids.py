"""A message id sent again is recorded once, from the durable log; event ids stay unique.

Each case of issue 12's item 4 against a real daemon over a real LMDB store:
the id sent again after a restart, after more than the 256 recent ids the
daemon keeps in memory, and after the session's state was evicted; and a
client-chosen message id equal to another event's id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd.events import USER_MESSAGE
from copilotd.sessions.service import MAX_IDLE_STATES
from copilotd.sessions.state import RECENT_MESSAGE_IDS
from tests.support.daemon_process import DaemonProcess
from tests.support.wire import wire_error


@pytest.fixture
async def stub(daemon: DaemonProcess) -> AsyncIterator[copilot_pb2_grpc.CopilotServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield copilot_pb2_grpc.CopilotServiceStub(channel)


async def create(stub: copilot_pb2_grpc.CopilotServiceAsyncStub, session_id: str) -> None:
    await stub.CreateSession(
        pb.CreateSessionRequest(config=pb.SessionConfig(session_id=session_id))
    )


async def send_and_wait(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, session_id: str, message_id: str = ""
) -> str:
    request = pb.SendMessageAndWaitRequest(
        session_id=session_id, prompt="hi", message_id=message_id
    )
    return (await stub.SendMessageAndWait(request)).message_id


async def user_message_ids(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, session_id: str
) -> list[str]:
    ids: list[str] = []
    cursor = 0
    while True:
        page = await stub.ListEvents(
            pb.ListEventsRequest(session_id=session_id, cursor=cursor, page_size=1000)
        )
        ids.extend(e.id for e in page.events if e.type == USER_MESSAGE)
        if not page.next_cursor:
            return ids
        cursor = page.next_cursor


async def send_again(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, session_id: str, message_id: str
) -> pb.SendMessageResponse:
    """Send ``message_id`` again; it must come back as the message already recorded."""
    again = await stub.SendMessage(
        pb.SendMessageRequest(session_id=session_id, prompt="hi", message_id=message_id)
    )
    assert again.message_id == message_id and again.sequence > 0 and not again.queued
    error = await wire_error(
        stub.SendMessageAndWait(
            pb.SendMessageAndWaitRequest(session_id=session_id, prompt="hi", message_id=message_id)
        )
    )
    assert (error.code, error.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "ERROR_REASON_MESSAGE_ALREADY_ANSWERED",
    )
    return again


async def test_a_message_id_sent_again_after_a_restart_is_recorded_once(
    daemon: DaemonProcess,
) -> None:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        await create(stub, "s")
        await send_and_wait(stub, "s", "mine-1")
        first = await user_message_ids(stub, "s")
    daemon.restart_after_kill()
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        again = await send_again(stub, "s", "mine-1")
        # A stale expected_last_sequence does not hide that it is the same message.
        stale = await stub.SendMessage(
            pb.SendMessageRequest(
                session_id="s", prompt="hi", message_id="mine-1", expected_last_sequence=1
            )
        )
        assert stale.sequence == again.sequence
        assert await user_message_ids(stub, "s") == first == ["mine-1"]


async def test_a_message_id_older_than_the_recent_ones_is_recorded_once(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub,
) -> None:
    await create(stub, "s")
    await send_and_wait(stub, "s", "old-one")
    for _ in range(RECENT_MESSAGE_IDS):
        await send_and_wait(stub, "s")
    await send_again(stub, "s", "old-one")
    ids = await user_message_ids(stub, "s")
    assert len(ids) == RECENT_MESSAGE_IDS + 1 and ids.count("old-one") == 1


async def test_a_message_id_of_an_evicted_session_is_recorded_once(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub,
) -> None:
    await create(stub, "s")
    await send_and_wait(stub, "s", "before-eviction")
    # Touching more sessions than the daemon keeps states for evicts "s"'s.
    for start in range(0, MAX_IDLE_STATES + 1, 64):
        await asyncio.gather(
            *(
                create(stub, f"other-{n}")
                for n in range(start, min(start + 64, MAX_IDLE_STATES + 1))
            )
        )
    await send_again(stub, "s", "before-eviction")
    assert await user_message_ids(stub, "s") == ["before-eviction"]


async def test_a_message_id_may_not_be_another_events_id(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub,
) -> None:
    await create(stub, "s")
    await send_and_wait(stub, "s", "mine")
    events = (await stub.ListEvents(pb.ListEventsRequest(session_id="s"))).events
    others = [e for e in events if e.type != USER_MESSAGE]
    assert {"session.start", "assistant.turn_start", "assistant.message"} <= {
        e.type for e in others
    }
    for taken in others:
        for call in (
            stub.SendMessage(
                pb.SendMessageRequest(session_id="s", prompt="x", message_id=taken.id)
            ),
            stub.SendMessageAndWait(
                pb.SendMessageAndWaitRequest(session_id="s", prompt="x", message_id=taken.id)
            ),
        ):
            error = await wire_error(call)
            assert (error.code, error.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "ERROR_REASON_INVALID_ARGUMENT",
            )
            assert f"already the id of a {taken.type} event" in error.details
            assert "choose another message id" in error.details
    after = (await stub.ListEvents(pb.ListEventsRequest(session_id="s"))).events
    assert list(after) == list(events)
    ids = [e.id for e in after]
    assert len(set(ids)) == len(ids)
