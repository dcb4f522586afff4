"""copilot_client without copilotd: types, error mapping, sessions, auto-start.

Servers here are in-process ``grpc.aio`` servers on temporary Unix sockets
(a generic handler, or a small fake of the CopilotService), and tiny fake
daemon scripts for auto-start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from copilot_client import (
    CopilotClient,
    CopilotError,
    DaemonUnavailableError,
    EventData,
    FailedPreconditionError,
    InvalidArgumentError,
    MessageOptions,
    ResourceExhaustedError,
    RPCError,
    SequenceConflictError,
    SessionConfig,
    SessionEvent,
    SessionEventType,
    SessionExistsError,
    SessionFailedError,
    SessionMetadata,
    SessionNotFoundError,
    SystemMessageConfig,
    TurnInProgressError,
)
from copilot_client.proto.v1 import copilot_pb2, copilot_pb2_grpc, events_pb2

ROOT = Path(__file__).resolve().parent.parent

# -- helpers -----------------------------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short temporary folder (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="cpc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_event(event_type: str, sequence: int = 1, **payload: Any) -> events_pb2.SessionEvent:
    event = events_pb2.SessionEvent(id=str(uuid.uuid4()), sequence=sequence, type=event_type)
    event.timestamp.GetCurrentTime()
    member = event_type.replace(".", "_")
    event.ephemeral = event_type in ("assistant.message_delta", "session.idle")
    getattr(event, member).SetInParent()
    for name, value in payload.items():
        setattr(getattr(event, member), name, value)
    return event


# -- event conversion --------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "payload", "expected"),
    [
        (
            "session.start",
            {"session_id": "s1", "model": "gpt-5", "producer_version": "0.1.0"},
            EventData(session_id="s1", model="gpt-5", producer_version="0.1.0"),
        ),
        (
            "session.resume",
            {"event_count": 7, "already_in_use": True, "turn_running": False},
            EventData(event_count=7, already_in_use=True, turn_running=False),
        ),
        ("user.message", {"content": "hi", "source": ""}, EventData(content="hi")),
        (
            "assistant.turn_start",
            {"turn_id": "t", "user_message_id": "u"},
            EventData(turn_id="t", user_message_id="u"),
        ),
        (
            "assistant.message",
            {"message_id": "m", "content": "", "turn_id": "t", "user_message_id": "u"},
            EventData(message_id="m", content="", turn_id="t", user_message_id="u", partial=False),
        ),
        (
            "assistant.message_delta",
            {"message_id": "m", "delta_content": "He", "turn_id": "t", "user_message_id": "u"},
            EventData(message_id="m", delta_content="He", turn_id="t", user_message_id="u"),
        ),
        (
            "assistant.turn_end",
            {"turn_id": "t", "user_message_id": "u", "reason": 4, "message": "restart"},
            EventData(turn_id="t", user_message_id="u", reason="interrupted", message="restart"),
        ),
        ("session.idle", {}, EventData()),
        (
            "session.error",
            {"error_type": "provider", "message": "boom", "user_message_id": "u"},
            EventData(error_type="provider", message="boom", user_message_id="u"),
        ),
        (
            "abort",
            {"reason": "user pressed stop", "turn_id": "t"},
            EventData(reason="user pressed stop", turn_id="t"),
        ),
    ],
)
def test_event_from_proto(event_type: str, payload: dict[str, Any], expected: EventData) -> None:
    proto = make_event(event_type, sequence=3, **payload)
    event = SessionEvent.from_proto(proto)
    assert event.type == event_type
    assert event.type is SessionEventType(event_type)
    assert event.type_name == event_type
    assert event.sequence == 3
    assert event.data == expected
    assert event.id == proto.id
    assert event.parent_id is None
    assert event.ephemeral is (event_type in ("assistant.message_delta", "session.idle"))
    assert event.timestamp.tzinfo is not None
    assert event.proto is proto


def test_event_fields_without_payload_are_none() -> None:
    event = SessionEvent.from_proto(make_event("session.idle", 9))
    assert event.data.content is None
    assert event.data.user_message_id is None


def test_unknown_event_type_and_payload_become_unknown() -> None:
    # A newer daemon: a new type name and a payload in a oneof member (field
    # 99, length-delimited) that this client's protos do not know.
    known = events_pb2.SessionEvent(
        id="e1", sequence=5, type="tool.execution_start", parent_id="e0"
    )
    tag = bytes([0x9A, 0x06])  # varint of (99 << 3) | 2: field 99, length-delimited
    wire = known.SerializeToString() + tag + bytes([3]) + b"abc"
    proto = events_pb2.SessionEvent.FromString(wire)
    event = SessionEvent.from_proto(proto)
    assert event.type is SessionEventType.UNKNOWN
    assert event.type_name == "tool.execution_start"
    assert event.data == EventData()
    assert event.data.content is None
    assert event.parent_id == "e0"
    assert SessionEventType("no.such.type") is SessionEventType.UNKNOWN


def test_event_type_is_a_str_enum() -> None:
    assert SessionEventType.ASSISTANT_MESSAGE == "assistant.message"
    assert f"{SessionEventType.USER_MESSAGE}" == "user.message"


def test_turn_end_with_a_reason_from_the_future() -> None:
    event = SessionEvent.from_proto(make_event("assistant.turn_end", 2, reason=42))
    assert event.data.reason == "42"


# -- configs and metadata ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "content", "mode"),
    [
        ("Be brief.", "Be brief.", copilot_pb2.SYSTEM_MESSAGE_MODE_APPEND),
        (
            {"content": "Only JSON.", "mode": "replace"},
            "Only JSON.",
            copilot_pb2.SYSTEM_MESSAGE_MODE_REPLACE,
        ),
        ({"content": "x"}, "x", copilot_pb2.SYSTEM_MESSAGE_MODE_APPEND),
        (
            SystemMessageConfig(content="y", mode="replace"),
            "y",
            copilot_pb2.SYSTEM_MESSAGE_MODE_REPLACE,
        ),
    ],
)
def test_system_message_forms(value: Any, content: str, mode: int) -> None:
    proto = SessionConfig(session_id="s", model="m", system_message=value).to_proto()
    assert proto.session_id == "s"
    assert proto.model == "m"
    assert proto.system_message.content == content
    assert proto.system_message.mode == mode


@pytest.mark.parametrize(
    "value", [{"mode": "append"}, {"content": "x", "mode": "prepend"}, {"content": "x", "extra": 1}]
)
def test_bad_system_message_dict(value: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SessionConfig(system_message=value).to_proto()


def test_session_config_defaults_and_keywords() -> None:
    proto = SessionConfig().to_proto()
    assert proto.session_id == "" and proto.model == "" and not proto.HasField("system_message")
    assert SessionConfig().streaming is True
    with pytest.raises(TypeError):
        SessionConfig("positional")  # type: ignore[misc]


def test_message_options() -> None:
    assert MessageOptions("hi") == MessageOptions(prompt="hi")
    assert MessageOptions("hi", source="cli").source == "cli"
    with pytest.raises(TypeError):
        MessageOptions("hi", "cli")  # type: ignore[misc]


def test_metadata_from_proto() -> None:
    proto = copilot_pb2.SessionMetadata(
        session_id="s", message_count=4, last_sequence=9, turn_running=True, model="gpt-5"
    )
    proto.start_time.FromDatetime(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    metadata = SessionMetadata.from_proto(proto)
    assert metadata.start_time == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert metadata.start_time.tzinfo is not None
    assert metadata.summary is None
    assert (metadata.model, metadata.message_count, metadata.last_sequence) == ("gpt-5", 4, 9)
    assert metadata.turn_running is True


# -- error mapping through a real grpc.aio server ----------------------------

SERVICE = "copilot.v1.CopilotService"


def _generic_handler() -> grpc.GenericRpcHandler:
    """Ping answers; DeleteSession aborts with the status and reason named in
    its session id ("STATUS" or "STATUS/REASON")."""

    async def ping(request: copilot_pb2.PingRequest, context: Any) -> copilot_pb2.PingResponse:
        return copilot_pb2.PingResponse(version="fake-0")

    async def delete(request: copilot_pb2.DeleteSessionRequest, context: Any) -> Any:
        status, _, reason = request.session_id.partition("/")
        if reason:
            context.set_trailing_metadata((("copilot-error-reason", reason),))
        await context.abort(grpc.StatusCode[status], f"details for {request.session_id}")

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Ping": grpc.unary_unary_rpc_method_handler(
                ping,
                request_deserializer=copilot_pb2.PingRequest.FromString,
                response_serializer=copilot_pb2.PingResponse.SerializeToString,
            ),
            "DeleteSession": grpc.unary_unary_rpc_method_handler(
                delete,
                request_deserializer=copilot_pb2.DeleteSessionRequest.FromString,
                response_serializer=copilot_pb2.DeleteSessionResponse.SerializeToString,
            ),
        },
    )


@pytest.fixture
async def aborting_client(sock_dir: Path) -> AsyncIterator[CopilotClient]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_generic_handler(),))
    socket = sock_dir / "s.sock"
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    async with CopilotClient(socket_path=socket, auto_start=False) as client:
        yield client
    await server.stop(None)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("NOT_FOUND/ERROR_REASON_SESSION_NOT_FOUND", SessionNotFoundError),
        ("NOT_FOUND", SessionNotFoundError),
        ("ALREADY_EXISTS/ERROR_REASON_SESSION_EXISTS", SessionExistsError),
        ("INVALID_ARGUMENT/ERROR_REASON_EMPTY_PROMPT", InvalidArgumentError),
        ("INVALID_ARGUMENT", InvalidArgumentError),
        ("FAILED_PRECONDITION/ERROR_REASON_TURN_IN_PROGRESS", TurnInProgressError),
        ("FAILED_PRECONDITION/ERROR_REASON_SEQUENCE_CONFLICT", SequenceConflictError),
        ("FAILED_PRECONDITION", FailedPreconditionError),
        ("RESOURCE_EXHAUSTED/ERROR_REASON_STORE_FULL", ResourceExhaustedError),
        ("UNAVAILABLE/ERROR_REASON_SHUTTING_DOWN", DaemonUnavailableError),
        ("INTERNAL/ERROR_REASON_INTERNAL", RPCError),
        ("PERMISSION_DENIED", RPCError),
    ],
)
async def test_status_and_reason_map_to_exceptions(
    aborting_client: CopilotClient, code: str, expected: type[RPCError]
) -> None:
    with pytest.raises(expected) as caught:
        await aborting_client.delete_session(code)
    error = caught.value
    assert type(error) is expected
    assert error.status is grpc.StatusCode[code.partition("/")[0]]
    assert error.reason == code.partition("/")[2]
    assert f"details for {code}" in str(error)


async def test_unserved_socket_without_auto_start(sock_dir: Path) -> None:
    socket = sock_dir / "nobody.sock"
    client = CopilotClient(socket_path=socket, auto_start=False)
    with pytest.raises(DaemonUnavailableError) as caught:
        await client.ping()
    message = str(caught.value)
    assert str(socket) in message
    assert "copilotd serve" in message and "systemctl --user start copilotd" in message
    assert "auto_start=False" in message
    assert caught.value.socket_path == str(socket)
    await client.stop()


def test_socket_path_too_long() -> None:
    with pytest.raises(ValueError, match="107"):
        CopilotClient(socket_path="/tmp/" + "x" * 120)


# -- sessions against a fake CopilotService ----------------------------------


class FakeDaemon(copilot_pb2_grpc.CopilotServiceServicer):
    """Just enough of copilotd: sessions, turns that echo, streams, paging.

    Prompts steer turns: "fail" ends with session.error, "hang" never ends,
    anything else is echoed back in two deltas. With ``events_before_reply``
    the turn's events are published before SendMessage returns.
    """

    def __init__(self) -> None:
        self.events: dict[str, list[events_pb2.SessionEvent]] = {}
        self.subscribers: dict[str, set[asyncio.Queue[Any]]] = {}
        self.running: dict[str, bool] = {}
        self.events_before_reply = False
        self.aborts: list[str] = []
        self.stream_calls: list[int] = []

    def _metadata(self, session_id: str) -> copilot_pb2.SessionMetadata:
        events = self.events[session_id]
        return copilot_pb2.SessionMetadata(
            session_id=session_id,
            start_time=events[0].timestamp,
            modified_time=events[-1].timestamp,
            last_sequence=events[-1].sequence,
            turn_running=self.running.get(session_id, False),
        )

    def publish(self, target: str, event_type: str, **payload: Any) -> events_pb2.SessionEvent:
        log = self.events[target]
        event = make_event(event_type, log[-1].sequence if log else 0, **payload)
        if not event.ephemeral:
            event.sequence += 1
            event.parent_id = log[-1].id if log else ""
            log.append(event)
        for queue in self.subscribers.get(target, ()):
            queue.put_nowait([event])
        return event

    def kick(self, session_id: str, status: grpc.StatusCode, reason: str) -> None:
        for queue in self.subscribers.get(session_id, ()):
            queue.put_nowait((status, reason))

    async def _abort(self, context: Any, status: grpc.StatusCode, reason: str, text: str) -> None:
        context.set_trailing_metadata((("copilot-error-reason", f"ERROR_REASON_{reason}"),))
        await context.abort(status, text)

    async def _check(self, session_id: str, context: Any) -> None:
        if session_id not in self.events:
            await self._abort(
                context, grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND", "no such session"
            )

    async def Ping(self, request: Any, context: Any) -> copilot_pb2.PingResponse:
        return copilot_pb2.PingResponse(version="fake-1")

    async def CreateSession(self, request: Any, context: Any) -> copilot_pb2.CreateSessionResponse:
        session_id = request.config.session_id or str(uuid.uuid4())
        if session_id in self.events:
            await self._abort(context, grpc.StatusCode.ALREADY_EXISTS, "SESSION_EXISTS", "taken")
        self.events[session_id] = []
        self.publish(session_id, "session.start", session_id=session_id, model=request.config.model)
        return copilot_pb2.CreateSessionResponse(session=self._metadata(session_id))

    async def ResumeSession(self, request: Any, context: Any) -> copilot_pb2.ResumeSessionResponse:
        await self._check(request.session_id, context)
        self.publish(
            request.session_id, "session.resume", event_count=len(self.events[request.session_id])
        )
        tail = self.events[request.session_id][-request.tail_events :]
        return copilot_pb2.ResumeSessionResponse(
            session=self._metadata(request.session_id), tail=tail
        )

    async def GetSession(self, request: Any, context: Any) -> copilot_pb2.GetSessionResponse:
        await self._check(request.session_id, context)
        return copilot_pb2.GetSessionResponse(session=self._metadata(request.session_id))

    async def ListSessions(self, request: Any, context: Any) -> copilot_pb2.ListSessionsResponse:
        ids = sorted(self.events, reverse=True)
        start = int(request.page_token or 0)
        end = start + (request.page_size or 50)
        return copilot_pb2.ListSessionsResponse(
            sessions=[self._metadata(i) for i in ids[start:end]],
            next_page_token=str(end) if end < len(ids) else "",
        )

    async def DeleteSession(self, request: Any, context: Any) -> copilot_pb2.DeleteSessionResponse:
        await self._check(request.session_id, context)
        del self.events[request.session_id]
        self.kick(request.session_id, grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
        return copilot_pb2.DeleteSessionResponse()

    async def SendMessage(self, request: Any, context: Any) -> copilot_pb2.SendMessageResponse:
        sid = request.session_id
        await self._check(sid, context)
        if not request.prompt.strip():
            await self._abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_PROMPT", "empty prompt"
            )
        if self.running.get(sid):
            await self._abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "TURN_IN_PROGRESS",
                "a turn is running",
            )
        message = self.publish(sid, "user.message", content=request.prompt, source=request.source)
        self.running[sid] = True
        turn = self._turn(sid, message.id, request.prompt)
        if self.events_before_reply:
            await turn
        else:
            asyncio.get_running_loop().create_task(turn)
        return copilot_pb2.SendMessageResponse(message_id=message.id, sequence=message.sequence)

    async def _turn(self, sid: str, user_id: str, prompt: str) -> None:
        await asyncio.sleep(0)
        ids = {"turn_id": "turn-" + user_id, "user_message_id": user_id}
        self.publish(sid, "assistant.turn_start", **ids)
        if prompt == "hang":
            return
        reason = events_pb2.TURN_END_REASON_COMPLETED
        if prompt == "fail":
            self.publish(sid, "session.error", error_type="provider", message="model down", **ids)
            reason = events_pb2.TURN_END_REASON_ERROR
        else:
            for piece in (prompt[:2], prompt[2:]):
                self.publish(sid, "assistant.message_delta", delta_content=piece, **ids)
            self.publish(sid, "assistant.message", content=f"echo: {prompt}", message_id="m", **ids)
        self.publish(sid, "assistant.turn_end", reason=reason, **ids)
        self.running[sid] = False
        self.publish(sid, "session.idle")

    async def AbortTurn(self, request: Any, context: Any) -> copilot_pb2.AbortTurnResponse:
        self.aborts.append(request.session_id)
        was_running = self.running.get(request.session_id, False)
        self.running[request.session_id] = False
        return copilot_pb2.AbortTurnResponse(aborted=was_running)

    async def ListEvents(self, request: Any, context: Any) -> copilot_pb2.ListEventsResponse:
        await self._check(request.session_id, context)
        after = [e for e in self.events[request.session_id] if e.sequence > request.cursor]
        page = after[: request.page_size or 100]
        more = len(after) > len(page)
        return copilot_pb2.ListEventsResponse(
            events=page, next_cursor=page[-1].sequence if more else 0
        )

    async def StreamEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:
        sid = request.session_id
        await self._check(sid, context)
        self.stream_calls.append(request.after_sequence)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.subscribers.setdefault(sid, set()).add(queue)
        try:
            backlog = [e for e in self.events[sid] if e.sequence > request.after_sequence]
            yield copilot_pb2.StreamEventsResponse(events=backlog, live=True)
            while True:
                item = await queue.get()
                if isinstance(item, tuple):
                    status, reason = item
                    await self._abort(context, status, reason, f"stream ended: {reason}")
                yield copilot_pb2.StreamEventsResponse(events=item, live=True)
        finally:
            self.subscribers[sid].discard(queue)


@pytest.fixture
async def fake(sock_dir: Path) -> AsyncIterator[tuple[FakeDaemon, CopilotClient]]:
    daemon = FakeDaemon()
    server = grpc.aio.server()
    copilot_pb2_grpc.add_CopilotServiceServicer_to_server(daemon, server)
    socket = sock_dir / "d.sock"
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    client = CopilotClient(socket_path=socket, auto_start=False)  # started lazily
    yield daemon, client
    await client.stop()
    await server.stop(None)


async def test_create_send_and_wait(fake: tuple[FakeDaemon, CopilotClient]) -> None:
    _, client = fake
    async with await client.create_session(
        SessionConfig(session_id="s1", model="gpt-5")
    ) as session:
        assert session.session_id == "s1"
        answer = await session.send_and_wait(MessageOptions(prompt="hello"))
        assert answer is not None and answer.type is SessionEventType.ASSISTANT_MESSAGE
        assert answer.data.content == "echo: hello"
        # Immediately again: the previous turn is over.
        answer = await session.send_and_wait("again")
        assert answer is not None and answer.data.content == "echo: again"
        history = await session.get_messages()
        assert [e.sequence for e in history] == list(range(1, len(history) + 1))
        assert history[1].type is SessionEventType.USER_MESSAGE
        assert all(not e.ephemeral for e in history)
    with pytest.raises(CopilotError, match="destroyed"):
        await session.send("after destroy")


async def test_send_and_wait_when_events_beat_the_reply(
    fake: tuple[FakeDaemon, CopilotClient],
) -> None:
    daemon, client = fake
    daemon.events_before_reply = True
    session = await client.create_session(session_id="early")
    answer = await asyncio.wait_for(session.send_and_wait("quick", timeout=5), 10)
    assert answer is not None and answer.data.content == "echo: quick"


async def test_send_and_wait_raises_on_session_error(
    fake: tuple[FakeDaemon, CopilotClient],
) -> None:
    _, client = fake
    session = await client.create_session()
    with pytest.raises(SessionFailedError, match="model down") as caught:
        await session.send_and_wait("fail")
    assert caught.value.event.type is SessionEventType.SESSION_ERROR
    assert caught.value.event.data.error_type == "provider"


async def test_send_and_wait_timeout_does_not_abort(fake: tuple[FakeDaemon, CopilotClient]) -> None:
    daemon, client = fake
    session = await client.create_session(session_id="slow")
    with pytest.raises(TimeoutError):
        await session.send_and_wait("hang", timeout=0.3)
    assert daemon.aborts == []
    assert daemon.running["slow"] is True
    with pytest.raises(TurnInProgressError, match="a turn is running"):
        await session.send("next")
    assert await session.abort("enough") is True
    assert daemon.aborts == ["slow"]


async def test_empty_prompt_is_rejected_by_the_server(
    fake: tuple[FakeDaemon, CopilotClient],
) -> None:
    _, client = fake
    session = await client.create_session()
    with pytest.raises(InvalidArgumentError) as caught:
        await session.send("   ")
    assert caught.value.reason == "ERROR_REASON_EMPTY_PROMPT"


async def test_handlers(
    fake: tuple[FakeDaemon, CopilotClient], caplog: pytest.LogCaptureFixture
) -> None:
    _, client = fake
    session = await client.create_session()
    seen: list[str] = []
    later: list[str] = []

    def broken(event: SessionEvent) -> None:
        raise RuntimeError("handler bug")

    async def async_handler(event: SessionEvent) -> None:
        await asyncio.sleep(0)
        later.append(event.type_name)

    session.on(broken)
    unsubscribe = session.on(lambda event: seen.append(event.type_name))
    session.on(async_handler)
    with caplog.at_level(logging.ERROR, logger="copilot_client"):
        await session.send_and_wait("hello")
        await asyncio.sleep(0.05)
    expected = [
        "user.message",
        "assistant.turn_start",
        "assistant.message_delta",
        "assistant.message_delta",
        "assistant.message",
        "assistant.turn_end",
        "session.idle",
    ]
    assert seen == expected
    assert later == expected
    assert "handler bug" in caplog.text
    unsubscribe()
    await session.send_and_wait("more")
    await asyncio.sleep(0.05)
    assert seen == expected
    assert len(later) == 2 * len(expected)


async def test_stream_reattaches_and_delivers_each_event_once(
    fake: tuple[FakeDaemon, CopilotClient],
) -> None:
    daemon, client = fake
    session = await client.create_session(session_id="kicked")
    sequences: list[int] = []
    session.on(lambda event: None if event.ephemeral else sequences.append(event.sequence))
    await session.send_and_wait("one")
    daemon.kick("kicked", grpc.StatusCode.RESOURCE_EXHAUSTED, "SUBSCRIBER_TOO_SLOW")
    daemon.publish("kicked", "abort", reason="while detached")  # seen on re-attach
    await session.send_and_wait("two")
    daemon.kick("kicked", grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    await session.send_and_wait("three")
    assert len(daemon.stream_calls) == 3
    assert sequences == list(range(2, len(daemon.events["kicked"]) + 1))


async def test_deleted_session(fake: tuple[FakeDaemon, CopilotClient]) -> None:
    _, client = fake
    session = await client.create_session(session_id="doomed")
    seen: list[SessionEvent] = []
    session.on(seen.append)
    await session.send_and_wait("hi")
    await client.delete_session("doomed")
    for _ in range(100):
        if isinstance(getattr(session, "_deleted", None), SessionNotFoundError):
            break
        await asyncio.sleep(0.01)
    with pytest.raises(SessionNotFoundError):
        await session.send("anyone?")
    assert await client.get_session_metadata("doomed") is None
    with pytest.raises(SessionNotFoundError):
        await client.resume_session("doomed")


async def test_client_calls(fake: tuple[FakeDaemon, CopilotClient]) -> None:
    daemon, client = fake
    assert await client.get_last_session_id() is None
    assert await client.ping() == "fake-1"
    for i in range(7):
        await client.create_session(session_id=f"s{i}")
    with pytest.raises(SessionExistsError):
        await client.create_session(SessionConfig(session_id="s1"))
    with pytest.raises(TypeError, match="modle"):
        await client.create_session(modle="gpt-5")
    assert [s.session_id for s in await client.list_sessions()] == [
        f"s{i}" for i in range(6, -1, -1)
    ]
    assert len(await client.list_sessions(limit=3)) == 3
    page = await client.list_sessions_page(page_size=5)
    assert len(page.sessions) == 5 and page.next_page_token
    page = await client.list_sessions_page(page_size=5, page_token=page.next_page_token)
    assert len(page.sessions) == 2 and page.next_page_token is None
    assert await client.get_last_session_id() == "s6"
    resumed = await client.resume_session("s3")
    assert resumed.metadata.last_sequence == 2
    assert daemon.events["s3"][-1].type == "session.resume"
    metadata = await client.get_session_metadata("s3")
    assert metadata is not None and metadata.start_time.tzinfo is not None


async def test_get_messages_pages(
    fake: tuple[FakeDaemon, CopilotClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, client = fake
    monkeypatch.setattr("copilot_client._session.EVENTS_PAGE_SIZE", 3)
    session = await client.create_session(session_id="long")
    for i in range(10):
        daemon.publish("long", "abort", reason=str(i))
    events = await session.get_messages()
    assert [e.sequence for e in events] == list(range(1, 12))
    assert [e.sequence for e in await session.get_events(after_sequence=4, limit=5)] == [
        5,
        6,
        7,
        8,
        9,
    ]


# -- auto-start --------------------------------------------------------------

FAKE_DAEMON = textwrap.dedent(
    """
    import asyncio, fcntl, os, sys
    import grpc
    from copilot_client.proto.v1 import copilot_pb2, copilot_pb2_grpc

    socket, data_dir = sys.argv[sys.argv.index("--socket") + 1], sys.argv[-1]
    pid = os.getpid()
    lock = open(os.path.join(data_dir, "lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"{pid} lost", flush=True)
        sys.exit(3)

    class Service(copilot_pb2_grpc.CopilotServiceServicer):
        async def Ping(self, request, context):
            return copilot_pb2.PingResponse(version=str(pid))

    async def main():
        server = grpc.aio.server()
        copilot_pb2_grpc.add_CopilotServiceServicer_to_server(Service(), server)
        if os.path.exists(socket):
            os.unlink(socket)
        server.add_insecure_port("unix:" + socket)
        await server.start()
        print(f"{pid} serving", flush=True)
        await server.wait_for_termination(timeout=60)

    asyncio.run(main())
    """
)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def test_auto_start_races_leave_one_detached_daemon(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = sock_dir / "fake_daemon.py"
    script.write_text(FAKE_DAEMON)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    data_dir = sock_dir / "data"
    options = {
        "socket_path": sock_dir / "run" / "d.sock",
        "data_dir": data_dir,
        "daemon_command": [sys.executable, str(script)],
    }
    (sock_dir / "run").mkdir(mode=0o700)
    clients = [CopilotClient(**options) for _ in range(3)]
    versions = await asyncio.gather(*(c.ping() for c in clients))
    pid = int(versions[0])
    try:
        assert set(versions) == {str(pid)}
        assert (data_dir.stat().st_mode & 0o777) == 0o700
        assert _ppid(pid) != os.getpid()  # detached: not our child
        for client in clients:
            await client.stop()  # never stops the daemon
        async with CopilotClient(**options, auto_start=False) as client:
            assert await client.ping() == str(pid)
        log = data_dir / "copilotd.log"
        for _ in range(100):
            lines = log.read_text().splitlines()
            if len(lines) == 3:
                break
            await asyncio.sleep(0.05)
        assert sorted(line.split()[1] for line in lines) == ["lost", "lost", "serving"]
    finally:
        os.kill(pid, 15)


async def test_auto_start_failure_names_socket_and_log(sock_dir: Path) -> None:
    command = [sys.executable, "-c", "import sys; sys.exit('boom: no model configured')"]
    client = CopilotClient(
        socket_path=sock_dir / "d.sock",
        data_dir=sock_dir / "data",
        daemon_command=command,
        start_timeout=1.0,
    )
    with pytest.raises(DaemonUnavailableError) as caught:
        await client.start()
    message = str(caught.value)
    assert str(sock_dir / "d.sock") in message
    assert str(sock_dir / "data" / "copilotd.log") in message
    assert "boom: no model configured" in message


async def test_auto_start_with_a_missing_command(sock_dir: Path) -> None:
    client = CopilotClient(
        socket_path=sock_dir / "d.sock",
        data_dir=sock_dir / "data",
        daemon_command=[str(sock_dir / "nope")],
    )
    with pytest.raises(DaemonUnavailableError, match="auto-start failed"):
        await client.ping()
