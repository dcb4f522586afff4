"""copilot_client without copilotd: event and config conversion, error mapping,
and what the client decides on its own (an unserved socket, a too-long path).

Sessions, turns, events and auto-start against the real daemon are in
``test_client_session.py``.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from copilot_client import (
    BackupUnsupportedError,
    CopilotClient,
    DaemonUnavailableError,
    EventData,
    FailedPreconditionError,
    InvalidArgumentError,
    InvalidImportError,
    MessageAlreadyAnsweredError,
    MessageOptions,
    NoRetentionPolicyError,
    ResourceExhaustedError,
    RPCError,
    SequenceConflictError,
    SessionConfig,
    SessionEvent,
    SessionEventType,
    SessionExistsError,
    SessionMetadata,
    SessionNotFoundError,
    SubscriberTooSlowError,
    SystemMessageConfig,
)
from copilot_client.proto.v1 import copilot_pb2, events_pb2
from copilot_client.proto.v1.copilot_pb2 import ErrorReason
from copilot_client.service import ERROR_FOR_REASON, map_rpc_error
from copilot_client.wire import REASON_METADATA_KEY

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
    known = events_pb2.SessionEvent(id="e1", sequence=5, type="hooks.future_kind", parent_id="e0")
    tag = bytes([0x9A, 0x06])  # varint of (99 << 3) | 2: field 99, length-delimited
    wire = known.SerializeToString() + tag + bytes([3]) + b"abc"
    proto = events_pb2.SessionEvent.FromString(wire)
    event = SessionEvent.from_proto(proto)
    assert event.type is SessionEventType.UNKNOWN
    assert event.type_name == "hooks.future_kind"
    assert event.data == EventData()
    assert event.data.content is None
    assert event.parent_id == "e0"
    assert SessionEventType("no.such.type") is SessionEventType.UNKNOWN


def test_event_type_is_a_str_enum() -> None:
    text: str = SessionEventType.ASSISTANT_MESSAGE
    assert text == "assistant.message"
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
        SessionConfig("positional")  # type: ignore[call-arg]


def test_message_options() -> None:
    assert MessageOptions("hi") == MessageOptions(prompt="hi")
    assert MessageOptions("hi", source="cli").source == "cli"
    with pytest.raises(TypeError):
        MessageOptions("hi", "cli")  # type: ignore[call-arg]


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


# -- error mapping ------------------------------------------------------------


def rpc_error(code: str, details: str | None) -> grpc.aio.AioRpcError:
    """A failed call as grpc.aio raises it: ``code`` is "STATUS" or "STATUS/REASON"."""
    status, _, reason = code.partition("/")
    trailing = grpc.aio.Metadata((REASON_METADATA_KEY, reason)) if reason else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(grpc.StatusCode[status], grpc.aio.Metadata(), trailing, details)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("NOT_FOUND/ERROR_REASON_SESSION_NOT_FOUND", SessionNotFoundError),
        ("NOT_FOUND", SessionNotFoundError),
        ("ALREADY_EXISTS/ERROR_REASON_SESSION_EXISTS", SessionExistsError),
        ("INVALID_ARGUMENT/ERROR_REASON_EMPTY_PROMPT", InvalidArgumentError),
        ("INVALID_ARGUMENT", InvalidArgumentError),
        ("FAILED_PRECONDITION/ERROR_REASON_SEQUENCE_CONFLICT", SequenceConflictError),
        ("FAILED_PRECONDITION", FailedPreconditionError),
        ("RESOURCE_EXHAUSTED/ERROR_REASON_STORE_FULL", ResourceExhaustedError),
        ("RESOURCE_EXHAUSTED/ERROR_REASON_SUBSCRIBER_TOO_SLOW", SubscriberTooSlowError),
        ("ALREADY_EXISTS/ERROR_REASON_MESSAGE_ALREADY_ANSWERED", MessageAlreadyAnsweredError),
        ("INVALID_ARGUMENT/ERROR_REASON_INVALID_IMPORT", InvalidImportError),
        ("FAILED_PRECONDITION/ERROR_REASON_BACKUP_UNSUPPORTED", BackupUnsupportedError),
        ("FAILED_PRECONDITION/ERROR_REASON_NO_RETENTION_POLICY", NoRetentionPolicyError),
        # A reason a newer daemon may send: the status decides.
        ("FAILED_PRECONDITION/ERROR_REASON_FROM_THE_FUTURE", FailedPreconditionError),
        ("UNAVAILABLE/ERROR_REASON_SHUTTING_DOWN", DaemonUnavailableError),
        ("UNAVAILABLE", DaemonUnavailableError),
        ("INTERNAL/ERROR_REASON_INTERNAL", RPCError),
        ("PERMISSION_DENIED", RPCError),
    ],
)
def test_status_and_reason_map_to_exceptions(code: str, expected: type[RPCError]) -> None:
    error = map_rpc_error(rpc_error(code, f"details for {code}"), socket_path="/run/x.sock")
    assert type(error) is expected
    assert error.status is grpc.StatusCode[code.partition("/")[0]]
    assert error.reason == code.partition("/")[2]
    assert f"details for {code}" in str(error)
    if expected is DaemonUnavailableError:
        assert isinstance(error, DaemonUnavailableError)
        assert error.socket_path == "/run/x.sock"
        assert "/run/x.sock" in str(error)


def test_every_error_reason_has_its_exception() -> None:
    # UNSPECIFIED is no reason: the status code decides for it.
    reasons = set(ErrorReason.values()) - {ErrorReason.ERROR_REASON_UNSPECIFIED}
    missing = [ErrorReason.Name(value) for value in reasons if value not in ERROR_FOR_REASON]
    assert not missing, f"map these reasons in copilot_client/service.py: {missing}"
    assert set(ERROR_FOR_REASON) == reasons


@pytest.mark.parametrize(
    ("specific", "general"),
    [
        (MessageAlreadyAnsweredError, SessionExistsError),
        (InvalidImportError, InvalidArgumentError),
        (BackupUnsupportedError, FailedPreconditionError),
        (NoRetentionPolicyError, FailedPreconditionError),
        (SubscriberTooSlowError, ResourceExhaustedError),
    ],
)
def test_new_classes_are_caught_where_their_reason_was(
    specific: type[RPCError], general: type[RPCError]
) -> None:
    # Earlier releases raised the general class: except clauses written for it keep working.
    assert issubclass(specific, general)


def test_the_reason_decides_before_the_status() -> None:
    # A reason the status alone would not give: the reason wins.
    error = map_rpc_error(
        rpc_error("FAILED_PRECONDITION/ERROR_REASON_SESSION_NOT_FOUND", "gone"), socket_path="s"
    )
    assert type(error) is SessionNotFoundError
    assert error.status is grpc.StatusCode.FAILED_PRECONDITION


def test_unavailable_messages() -> None:
    down = map_rpc_error(rpc_error("UNAVAILABLE", "connect failed"), socket_path="/run/x.sock")
    assert "not reachable at /run/x.sock (connect failed)" in str(down)
    assert "copilotd serve" in str(down) and "systemctl --user start copilotd" in str(down)
    leaving = map_rpc_error(
        rpc_error("UNAVAILABLE/ERROR_REASON_SHUTTING_DOWN", "bye"), socket_path="/run/x.sock"
    )
    assert "/run/x.sock is shutting down: bye" in str(leaving)


@pytest.mark.parametrize(
    ("code", "details"),
    [
        ("INTERNAL", "Stream removed (RST_STREAM (Received RST_STREAM with error code 2))"),
        ("UNKNOWN", "Stream removed (Data frame with END_STREAM flag received)"),
    ],
)
def test_a_call_a_proxy_cut_is_an_outage(code: str, details: str) -> None:
    # The two ways nginx ends a call when the daemon behind it dies: retried like UNAVAILABLE.
    cut = map_rpc_error(rpc_error(code, details), socket_path="balancer:443")
    assert type(cut) is DaemonUnavailableError
    assert cut.status is grpc.StatusCode[code]
    assert "through balancer:443 was cut" in str(cut) and "lost the daemon" in str(cut)
    assert details in str(cut)
    # The daemon's own failures carry its reason: never taken for an outage.
    failed = map_rpc_error(rpc_error(f"{code}/ERROR_REASON_INTERNAL", details), socket_path="s")
    assert type(failed) is RPCError
    assert type(map_rpc_error(rpc_error(code, "boom"), socket_path="s")) is RPCError


def test_a_proxy_without_a_daemon_says_so() -> None:
    # nginx's 502 when no daemon behind it answers: not "start copilotd here".
    gateway = map_rpc_error(
        rpc_error("UNAVAILABLE", "Received http2 header with status: 502"),
        socket_path="balancer:443",
    )
    assert type(gateway) is DaemonUnavailableError
    assert "the proxy at balancer:443 found no copilotd behind it" in str(gateway)
    assert "copilotd serve" not in str(gateway)


def test_error_without_details_or_metadata() -> None:
    bare = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, None, None, None)
    error = map_rpc_error(bare, socket_path="s")
    assert type(error) is RPCError
    assert error.reason == ""
    assert error.message == "INTERNAL"


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


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        (
            "SERVER: Received message larger than max (9437189 vs. 8388608)",
            "the request is 9437189 bytes, over the daemon's message size limit of 8388608",
        ),
        (
            "CLIENT: Sent message larger than max (70000000 vs. 67108864)",
            "the request is 70000000 bytes, over this client's message size limit of 67108864",
        ),
        (
            "Stream removed (CLIENT: Received message larger than max (70000000 vs. 67108864))",
            "the daemon's answer is 70000000 bytes, over this client's message size limit",
        ),
        (
            "SERVER: Sent message larger than max (9437189 vs. 8388608)",
            "the daemon's answer is 9437189 bytes, over the daemon's message size limit",
        ),
        (
            "Received message larger than max (10 vs. 5)",
            "the request is 10 bytes, over the daemon's message size limit of 5",
        ),
    ],
)
def test_message_size_limits_get_a_clear_message(details: str, expected: str) -> None:
    error = map_rpc_error(rpc_error("RESOURCE_EXHAUSTED", details), socket_path="s")
    assert type(error) is ResourceExhaustedError
    assert error.reason == ""
    assert expected in error.message
    if "request" in expected:
        assert "--max-prompt-bytes" in error.message
    else:
        assert "smaller pages" in error.message
    # The daemon's own RESOURCE_EXHAUSTED keeps its words.
    full = map_rpc_error(
        rpc_error("RESOURCE_EXHAUSTED/ERROR_REASON_STORE_FULL", details), socket_path="s"
    )
    assert full.message == details
