"""Permission requests for client-side tools, on the wire against a real daemon.

A call of a tool declared without ``skip_permission`` is recorded with
``permission.requested`` and runs only once a client approves it
(HandlePendingPermission); the offline model calls tools as in
tests/test_tools_wire.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc, events_pb2
from tests.support.daemon_process import DaemonProcess
from tests.support.wire import wire_error
from tests.test_tools_wire import (
    INTERRUPTED,
    WEATHER,
    answer,
    ask,
    daemon_with_config,
    events_until,
    new_session,
)

if TYPE_CHECKING:
    from copilot_client.proto.v1.copilot_pb2_grpc import CopilotServiceAsyncStub as Stub

GUARDED = events_pb2.ToolDefinition(name="delete_file", description="Deletes a file")
PROMPT = 'call delete_file {"path": "notes.txt"}'


@pytest.fixture
async def stub(daemon: DaemonProcess) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield copilot_pb2_grpc.CopilotServiceStub(channel)


def decide(
    stub: Stub, session_id: str, request_id: str, *, approved: bool, reason: str = ""
) -> grpc.aio.UnaryUnaryCall[pb.HandlePendingPermissionRequest, pb.HandlePendingPermissionResponse]:
    return stub.HandlePendingPermission(
        pb.HandlePendingPermissionRequest(
            session_id=session_id, request_id=request_id, approved=approved, reason=reason
        )
    )


async def requested(stub: Stub, session_id: str) -> tuple[int, str]:
    """Ask for the guarded call; the sequence and request id of its permission.requested."""
    await ask(stub, session_id, PROMPT)
    events = await events_until(stub, session_id, "permission.requested")
    request = events[-1]
    assert events[-2].type == "tool.execution_start"
    assert request.permission_requested.tool_name == "delete_file"
    return request.sequence, request.permission_requested.request_id


async def test_a_denied_call_gets_a_denied_result_the_model_sees(stub: Stub) -> None:
    session_id = await new_session(stub, GUARDED)
    sequence, request_id = await requested(stub, session_id)
    # No result is taken while the request is open.
    early = await wire_error(answer(stub, session_id, request_id, "done"))
    assert (early.code, early.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_AWAITING_PERMISSION",
    )
    metadata = (await stub.GetSession(pb.GetSessionRequest(session_id=session_id))).session
    assert [c.awaiting_permission for c in metadata.pending_tool_calls] == [True]

    response = await decide(stub, session_id, request_id, approved=False, reason="too risky")
    assert response.recorded
    rest = await events_until(stub, session_id, "assistant.turn_end", after=sequence)
    assert [e.type for e in rest] == [
        "permission.completed",
        "tool.execution_complete",
        "assistant.message",
        "assistant.turn_end",
    ]
    assert not rest[0].permission_completed.approved
    assert rest[0].permission_completed.reason == "too risky"
    result = rest[1].tool_execution_complete.result
    assert (result.result_type, result.text_result_for_llm) == (
        "denied",
        "permission denied: too risky",
    )
    assert "permission denied: too risky" in rest[2].assistant_message.content

    # The same decision again is recognised, the other one refused.
    assert not (await decide(stub, session_id, request_id, approved=False)).recorded
    other = await wire_error(decide(stub, session_id, request_id, approved=True))
    assert (other.code, other.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "ERROR_REASON_PERMISSION_ANSWERED",
    )
    long = await wire_error(decide(stub, session_id, request_id, approved=False, reason="x" * 2000))
    assert (long.code, "reason is 2000 bytes") == (
        grpc.StatusCode.INVALID_ARGUMENT,
        long.details[: len("reason is 2000 bytes")],
    )
    unknown = await wire_error(decide(stub, session_id, "no-such-request", approved=True))
    assert (unknown.code, unknown.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_UNKNOWN_PERMISSION_REQUEST",
    )


async def test_an_approved_call_goes_on_to_a_client(stub: Stub) -> None:
    session_id = await new_session(stub, GUARDED)
    sequence, request_id = await requested(stub, session_id)
    assert (await decide(stub, session_id, request_id, approved=True)).recorded
    events = await events_until(stub, session_id, "external_tool.requested", after=sequence)
    assert [e.type for e in events] == ["permission.completed", "external_tool.requested"]
    assert events[0].permission_completed.approved
    assert events[1].external_tool_requested.tool_call_id == request_id
    assert (await answer(stub, session_id, request_id, "deleted")).recorded
    rest = await events_until(stub, session_id, "assistant.turn_end", after=events[-1].sequence)
    assert rest[1].assistant_message.content == 'delete_file returned: "deleted".'


async def test_a_tool_with_skip_permission_is_requested_at_once(stub: Stub) -> None:
    session_id = await new_session(stub, WEATHER, GUARDED)
    await ask(stub, session_id, 'call get_weather {"city": "Oslo"}')
    events = await events_until(stub, session_id, "external_tool.requested")
    assert not any(e.type.startswith("permission.") for e in events)


async def test_an_open_request_survives_a_daemon_kill_and_is_answered_after(
    daemon: DaemonProcess,
) -> None:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        session_id = await new_session(stub, GUARDED)
        sequence, request_id = await requested(stub, session_id)
    daemon.restart_after_kill()
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        listed = await stub.ListPendingToolCalls(
            pb.ListPendingToolCallsRequest(session_id=session_id)
        )
        assert [(c.tool_call_id, c.awaiting_permission) for c in listed.calls] == [
            (request_id, True)
        ]
        assert (await decide(stub, session_id, request_id, approved=True)).recorded
        await events_until(stub, session_id, "external_tool.requested", after=sequence)
        await answer(stub, session_id, request_id, "gone")
        rest = await events_until(stub, session_id, "assistant.turn_end", after=sequence)
    assert rest[-2].assistant_message.content == 'delete_file returned: "gone".'


async def test_an_abort_denies_the_open_request_and_closes_its_call(stub: Stub) -> None:
    session_id = await new_session(stub, GUARDED)
    sequence, request_id = await requested(stub, session_id)
    assert (await stub.AbortTurn(pb.AbortTurnRequest(session_id=session_id))).aborted
    rest = await events_until(stub, session_id, "assistant.turn_end", after=sequence)
    assert [e.type for e in rest] == [
        "abort",
        "permission.completed",
        "tool.execution_complete",
        "assistant.turn_end",
    ]
    assert not rest[1].permission_completed.approved
    assert rest[1].permission_completed.reason.startswith(INTERRUPTED)
    late = await wire_error(decide(stub, session_id, request_id, approved=True))
    assert late.reason == "ERROR_REASON_PERMISSION_ANSWERED"


async def test_resuming_without_pending_work_denies_the_open_request(stub: Stub) -> None:
    session_id = await new_session(stub, GUARDED)
    sequence, _ = await requested(stub, session_id)
    await stub.ResumeSession(pb.ResumeSessionRequest(session_id=session_id))
    rest = await events_until(stub, session_id, "assistant.turn_end", after=sequence)
    assert [e.type for e in rest[:3]] == [
        "session.resume",
        "permission.completed",
        "tool.execution_complete",
    ]
    assert not rest[1].permission_completed.approved
    assert rest[-1].assistant_turn_end.reason == events_pb2.TURN_END_REASON_COMPLETED


async def test_an_unanswered_request_times_out_denied(short_tmp: Path) -> None:
    daemon = daemon_with_config(short_tmp, '[tools]\npending_timeout = "1s"\n')
    try:
        async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
            stub = copilot_pb2_grpc.CopilotServiceStub(channel)
            session_id = await new_session(stub, GUARDED)
            await ask(stub, session_id, PROMPT)
            events = await events_until(stub, session_id, "assistant.turn_end")
    finally:
        daemon.kill()
    decision = next(e for e in events if e.type == "permission.completed")
    assert not decision.permission_completed.approved
    assert "1 s" in decision.permission_completed.reason
    complete = next(e for e in events if e.type == "tool.execution_complete")
    assert complete.tool_execution_complete.result.result_type == "timeout"
