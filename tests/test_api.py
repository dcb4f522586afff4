"""The gRPC API against a real daemon: status codes, messages, listing, deletion.

Each error case is checked twice: on the wire (status code, the
"copilot-error-reason" trailer, the same reason in the standard
``google.rpc.Status`` details as generic gRPC tooling reads them, a message
that says what to do) and through the client (the matching exception).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from copilot_client import (
    CopilotClient,
    InvalidArgumentError,
    MessageOptions,
    SequenceConflictError,
    SessionExistsError,
    SessionNotFoundError,
)
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from tests.support.daemon_process import DaemonProcess
from tests.support.wire import wire_error

MAX_PROMPT_BYTES = 2000


@pytest.fixture
def slow_daemon(short_tmp: Any) -> Any:
    """Turns last long enough to overlap; prompts are capped small for the size check."""
    process = DaemonProcess(
        short_tmp, ["--offline-delay", "0.5", "--max-prompt-bytes", str(MAX_PROMPT_BYTES)]
    ).start()
    yield process
    process.kill()


@pytest.fixture
async def stub(
    slow_daemon: DaemonProcess,
) -> AsyncIterator[copilot_pb2_grpc.CopilotServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"unix:{slow_daemon.socket_path}") as channel:
        yield copilot_pb2_grpc.CopilotServiceStub(channel)


@pytest.fixture
async def client(slow_daemon: DaemonProcess) -> AsyncIterator[CopilotClient]:
    async with CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client:
        yield client


BAD_IDS = ["", "has/slash", "../etc", "a" * 129, "ctl\x00char", "new\nline", " space", "-leading"]


@pytest.mark.parametrize("bad_id", BAD_IDS)
async def test_malformed_session_id(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, client: CopilotClient, bad_id: str
) -> None:
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: stub.GetSession(pb.GetSessionRequest(session_id=bad_id)),
        lambda: stub.ResumeSession(pb.ResumeSessionRequest(session_id=bad_id)),
        lambda: stub.DeleteSession(pb.DeleteSessionRequest(session_id=bad_id)),
        lambda: stub.SendMessage(pb.SendMessageRequest(session_id=bad_id, prompt="hi")),
        lambda: stub.ListEvents(pb.ListEventsRequest(session_id=bad_id)),
    ]
    if bad_id:  # an empty id on create means "generate one"
        calls.append(
            lambda: stub.CreateSession(
                pb.CreateSessionRequest(config=pb.SessionConfig(session_id=bad_id))
            )
        )
    for call in calls:
        error = await wire_error(call())
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.reason == "ERROR_REASON_INVALID_SESSION_ID"
        assert "1 to 128 characters" in error.details
    if bad_id:
        with pytest.raises(InvalidArgumentError, match="1 to 128 characters"):
            await client.create_session(session_id=bad_id)
    with pytest.raises(InvalidArgumentError, match="session"):
        await client.resume_session(bad_id)


async def test_unknown_session(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, client: CopilotClient
) -> None:
    calls: list[Awaitable[object]] = [
        stub.GetSession(pb.GetSessionRequest(session_id="missing")),
        stub.ResumeSession(pb.ResumeSessionRequest(session_id="missing")),
        stub.DeleteSession(pb.DeleteSessionRequest(session_id="missing")),
        stub.SendMessage(pb.SendMessageRequest(session_id="missing", prompt="hi")),
        stub.ListEvents(pb.ListEventsRequest(session_id="missing")),
        stub.AbortTurn(pb.AbortTurnRequest(session_id="missing")),
    ]
    for call in calls:
        error = await wire_error(call)
        assert error.code == grpc.StatusCode.NOT_FOUND
        assert error.reason == "ERROR_REASON_SESSION_NOT_FOUND"
        assert "'missing'" in error.details
    stream = stub.StreamEvents(pb.StreamEventsRequest(session_id="missing"))
    error = await wire_error(stream.read())
    assert error.code == grpc.StatusCode.NOT_FOUND

    with pytest.raises(SessionNotFoundError, match="'missing'"):
        await client.resume_session("missing")
    with pytest.raises(SessionNotFoundError):
        await client.delete_session("missing")
    assert await client.get_session_metadata("missing") is None


async def test_session_id_taken(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, client: CopilotClient
) -> None:
    await client.create_session(session_id="taken")
    error = await wire_error(
        stub.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(session_id="taken")))
    )
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "ERROR_REASON_SESSION_EXISTS"
    assert "'taken' already exists" in error.details and "resume" in error.details
    with pytest.raises(SessionExistsError, match="already exists"):
        await client.create_session(session_id="taken")


async def test_generated_session_id(client: CopilotClient) -> None:
    first = await client.create_session()
    second = await client.create_session()
    assert first.session_id != second.session_id
    assert len(first.session_id) == 36  # a UUID


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
async def test_empty_prompt(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, client: CopilotClient, prompt: str
) -> None:
    session = await client.create_session(session_id="quiet")
    error = await wire_error(
        stub.SendMessage(pb.SendMessageRequest(session_id="quiet", prompt=prompt))
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "ERROR_REASON_EMPTY_PROMPT"
    with pytest.raises(InvalidArgumentError, match="prompt is empty"):
        await session.send(prompt)
    assert [e.type for e in await session.get_messages()] == ["session.start"]


async def test_prompt_too_large(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, client: CopilotClient
) -> None:
    session = await client.create_session(session_id="big")
    prompt = "é" * (MAX_PROMPT_BYTES // 2 + 1)  # two UTF-8 bytes each: just over the cap
    error = await wire_error(
        stub.SendMessage(pb.SendMessageRequest(session_id="big", prompt=prompt))
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "ERROR_REASON_PROMPT_TOO_LARGE"
    assert f"{MAX_PROMPT_BYTES + 2} bytes" in error.details
    assert "--max-prompt-bytes" in error.details
    with pytest.raises(InvalidArgumentError, match="over the limit"):
        await session.send(prompt)
    await session.send("é" * (MAX_PROMPT_BYTES // 2))  # exactly at the cap is fine


async def test_messages_sent_during_a_turn_queue(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, client: CopilotClient
) -> None:
    session = await client.create_session(session_id="busy")
    first = await stub.SendMessage(pb.SendMessageRequest(session_id="busy", prompt="first"))
    second = await stub.SendMessage(pb.SendMessageRequest(session_id="busy", prompt="second"))
    assert (first.queued, second.queued) == (False, True)
    assert first.sequence == 2 and second.sequence == 0  # no sequence until its turn starts
    metadata = await client.get_session_metadata("busy")
    assert metadata is not None and metadata.pending_messages == 1
    assert await session.abort()  # ends the first turn; the queued one starts next

    answer = await session.send_and_wait("third", timeout=60)
    assert answer is not None and 'You said: "third"' in (answer.data.content or "")
    history = await session.get_messages()
    users = [e for e in history if e.type == "user.message"]
    assert [(u.id, u.data.content) for u in users] == [
        (first.message_id, "first"),
        (second.message_id, "second"),
        (users[2].id, "third"),
    ]
    metadata = await client.get_session_metadata("busy")
    assert metadata is not None and metadata.pending_messages == 0


async def test_stale_expected_sequence_writes_nothing(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, client: CopilotClient
) -> None:
    session = await client.create_session(session_id="guarded")
    error = await wire_error(
        stub.SendMessage(
            pb.SendMessageRequest(session_id="guarded", prompt="late", expected_last_sequence=0)
        )
    )
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "ERROR_REASON_SEQUENCE_CONFLICT"
    assert "moved on to sequence 1" in error.details and "nothing was written" in error.details
    assert dict(error.info.metadata) == {"current_sequence": "1"}
    with pytest.raises(SequenceConflictError) as caught:
        await session.send(MessageOptions("late", expected_last_sequence=0))
    assert caught.value.current_sequence == 1
    assert [e.type for e in await session.get_messages()] == ["session.start"]
    # The current sequence is accepted.
    await session.send(MessageOptions("on time", expected_last_sequence=1))
    assert [e.data.content for e in await session.get_messages() if e.type == "user.message"] == [
        "on time"
    ]


async def test_invalid_page_token(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, client: CopilotClient
) -> None:
    error = await wire_error(stub.ListSessions(pb.ListSessionsRequest(page_token="not-a-token!")))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "ERROR_REASON_INVALID_PAGE_TOKEN"
    assert "next_page_token" in error.details
    with pytest.raises(InvalidArgumentError, match="page_token"):
        await client.list_sessions_page(page_token="not-a-token!")


async def test_page_sizes_are_bounded(stub: copilot_pb2_grpc.CopilotServiceAsyncStub) -> None:
    for index in range(3):
        await stub.CreateSession(
            pb.CreateSessionRequest(config=pb.SessionConfig(session_id=f"s{index}"))
        )
    default = await stub.ListSessions(pb.ListSessionsRequest())
    huge = await stub.ListSessions(pb.ListSessionsRequest(page_size=4_000_000_000))
    assert len(default.sessions) == len(huge.sessions) == 3
    assert not huge.next_page_token


async def test_listing_250_sessions_page_by_page(client: CopilotClient) -> None:
    ids = [f"user-{index:03d}" for index in range(250)]
    for session_id in ids:
        await client.create_session(session_id=session_id)
    # Activity moves a session to the front.
    touched = await client.resume_session("user-007")
    await touched.destroy()
    expected = ["user-007", *reversed([i for i in ids if i != "user-007"])]

    for page_size in (1, 7, 50, 250, 1000):
        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await client.list_sessions_page(page_size=page_size, page_token=token)
            assert len(page.sessions) <= page_size
            seen.extend(s.session_id for s in page.sessions)
            pages += 1
            if not page.next_page_token:
                break
            token = page.next_page_token
        assert seen == expected, f"page size {page_size}"
        assert pages == max(1, -(-250 // page_size))
    times = [s.modified_time for s in await client.list_sessions()]
    assert times == sorted(times, reverse=True)
    assert await client.get_last_session_id() == "user-007"


async def test_delete_removes_history_and_listing(client: CopilotClient) -> None:
    session = await client.create_session(session_id="doomed")
    keeper = await client.create_session(session_id="keeper")
    await session.send_and_wait("remember me", timeout=30)
    assert len(await session.get_messages()) == 5

    await client.delete_session("doomed")

    assert [s.session_id for s in await client.list_sessions()] == ["keeper"]
    assert await client.get_session_metadata("doomed") is None
    with pytest.raises(SessionNotFoundError):
        await client.resume_session("doomed")
    with pytest.raises(SessionNotFoundError):
        await session.get_messages()
    # The id can be used again, with an empty history.
    again = await client.create_session(session_id="doomed")
    assert [e.type for e in await again.get_messages()] == ["session.start"]
    assert [e.type for e in await keeper.get_messages()] == ["session.start"]
