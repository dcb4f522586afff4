"""Client-side tools on the wire, against a real daemon and its offline model.

The offline model calls a declared tool for each prompt line ``call NAME {json}``
(see copilotd/providers/offline.py), so every round here is deterministic.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc, events_pb2
from tests.support.daemon_process import DaemonProcess
from tests.support.wire import read_response, wire_error

if TYPE_CHECKING:
    from copilot_client.proto.v1.copilot_pb2_grpc import CopilotServiceAsyncStub as Stub

# skip_permission: these tests are about calls; tests/test_tool_permissions.py
# covers the permission request a tool without it gets first.
WEATHER = events_pb2.ToolDefinition(
    name="get_weather",
    description="The weather in a city",
    parameters_json_schema=json.dumps(
        {"type": "object", "properties": {"city": {"type": "string"}}}
    ),
    skip_permission=True,
)
CLOCK = events_pb2.ToolDefinition(name="get_time", description="The time", skip_permission=True)
INTERRUPTED = "interrupted: no client answered"


@pytest.fixture
async def stub(daemon: DaemonProcess) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield copilot_pb2_grpc.CopilotServiceStub(channel)


async def new_session(stub: Stub, *tools: events_pb2.ToolDefinition) -> str:
    config = pb.SessionConfig(tools=tools or [WEATHER])
    return (await stub.CreateSession(pb.CreateSessionRequest(config=config))).session.session_id


async def events_until(
    stub: Stub, session_id: str, event_type: str, *, after: int = 0, count: int = 1
) -> list[events_pb2.SessionEvent]:
    """The persisted events after ``after`` up to the ``count``-th of ``event_type``."""
    seen: list[events_pb2.SessionEvent] = []
    call = stub.StreamEvents(pb.StreamEventsRequest(session_id=session_id, after_sequence=after))
    try:
        while True:
            for event in (await read_response(call)).events:
                if event.ephemeral:
                    continue
                seen.append(event)
                if sum(e.type == event_type for e in seen) == count:
                    return seen
    finally:
        call.cancel()


def answer(
    stub: Stub, session_id: str, call_id: str, text: str
) -> Awaitable[pb.HandlePendingToolCallResponse]:
    return stub.HandlePendingToolCall(
        pb.HandlePendingToolCallRequest(
            session_id=session_id,
            tool_call_id=call_id,
            result=events_pb2.ToolResult(text_result_for_llm=text),
        )
    )


async def ask(stub: Stub, session_id: str, prompt: str) -> None:
    await stub.SendMessage(pb.SendMessageRequest(session_id=session_id, prompt=prompt))


async def test_a_call_waits_for_its_result_then_the_model_answers_with_it(stub: Stub) -> None:
    session_id = await new_session(stub)
    await ask(stub, session_id, 'What is the weather?\ncall get_weather {"city": "Paris"}')
    events = await events_until(stub, session_id, "external_tool.requested")
    message, start, requested = events[-3:]
    assert message.type == "assistant.message"
    [request] = message.assistant_message.tool_requests
    assert (request.name, json.loads(request.arguments_json)) == ("get_weather", {"city": "Paris"})
    assert start.type == "tool.execution_start"
    assert start.tool_execution_start.tool_call_id == request.tool_call_id
    assert requested.external_tool_requested.tool_call_id == request.tool_call_id

    metadata = (await stub.GetSession(pb.GetSessionRequest(session_id=session_id))).session
    assert metadata.turn_running
    assert [c.tool_call_id for c in metadata.pending_tool_calls] == [request.tool_call_id]

    response = await answer(stub, session_id, request.tool_call_id, "sunny, 21 C")
    assert response.recorded
    rest = await events_until(stub, session_id, "assistant.turn_end", after=requested.sequence)
    assert [e.type for e in rest] == [
        "tool.execution_complete",
        "assistant.message",
        "assistant.turn_end",
    ]
    complete = rest[0].tool_execution_complete
    assert (complete.tool_call_id, complete.success) == (request.tool_call_id, True)
    assert rest[1].assistant_message.content == 'get_weather returned: "sunny, 21 C".'
    assert rest[2].assistant_turn_end.reason == events_pb2.TURN_END_REASON_COMPLETED
    listed = await stub.ListPendingToolCalls(pb.ListPendingToolCallsRequest(session_id=session_id))
    assert list(listed.calls) == []

    # The same result again (a retry after a lost connection) is recognised...
    again = await answer(stub, session_id, request.tool_call_id, "sunny, 21 C")
    assert not again.recorded
    # ... a different one is refused, and so is a call nobody made.
    other = await wire_error(answer(stub, session_id, request.tool_call_id, "rain"))
    assert (other.code, other.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "ERROR_REASON_TOOL_CALL_ANSWERED",
    )
    unknown = await wire_error(answer(stub, session_id, "call_nobody_made", "x"))
    assert (unknown.code, unknown.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_UNKNOWN_TOOL_CALL",
    )
    assert "ListPendingToolCalls" in unknown.details
    completes = await events_until(stub, session_id, "assistant.turn_end")
    assert sum(e.type == "tool.execution_complete" for e in completes) == 1


async def test_several_calls_in_one_message_all_wait_and_the_answer_carries_each(
    stub: Stub,
) -> None:
    session_id = await new_session(stub, WEATHER, CLOCK)
    await ask(stub, session_id, 'call get_weather {"city": "Oslo"}\ncall get_time {}')
    events = await events_until(stub, session_id, "external_tool.requested", count=2)
    requests = [e.external_tool_requested for e in events if e.type == "external_tool.requested"]
    assert [r.tool_name for r in requests] == ["get_weather", "get_time"]
    # Answered out of order: the turn waits for both.
    await answer(stub, session_id, requests[1].tool_call_id, "noon")
    await answer(stub, session_id, requests[0].tool_call_id, "snow")
    rest = await events_until(stub, session_id, "assistant.turn_end", after=events[-1].sequence)
    answer_event = next(e for e in rest if e.type == "assistant.message")
    assert answer_event.assistant_message.content == (
        'get_time returned: "noon". get_weather returned: "snow".'
    )


async def test_a_call_open_when_the_daemon_is_killed_is_answered_after_restart(
    daemon: DaemonProcess,
) -> None:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        session_id = await new_session(stub)
        await ask(stub, session_id, 'call get_weather {"city": "Rome"}')
        events = await events_until(stub, session_id, "external_tool.requested")
    call_id = events[-1].external_tool_requested.tool_call_id
    daemon.restart_after_kill()
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        listed = await stub.ListPendingToolCalls(
            pb.ListPendingToolCallsRequest(session_id=session_id)
        )
        assert [c.tool_call_id for c in listed.calls] == [call_id]
        metadata = (await stub.GetSession(pb.GetSessionRequest(session_id=session_id))).session
        assert metadata.turn_running
        await answer(stub, session_id, call_id, "warm")
        rest = await events_until(stub, session_id, "assistant.turn_end", after=events[-1].sequence)
    assert [e.type for e in rest] == [
        "tool.execution_complete",
        "assistant.message",
        "assistant.turn_end",
    ]
    assert rest[1].assistant_message.content == 'get_weather returned: "warm".'


async def test_resuming_without_pending_work_closes_the_call_and_the_session_goes_on(
    stub: Stub,
) -> None:
    session_id = await new_session(stub)
    await ask(stub, session_id, 'call get_weather {"city": "Lima"}')
    events = await events_until(stub, session_id, "external_tool.requested")
    call_id = events[-1].external_tool_requested.tool_call_id
    await stub.ResumeSession(pb.ResumeSessionRequest(session_id=session_id))
    rest = await events_until(stub, session_id, "assistant.turn_end", after=events[-1].sequence)
    complete = next(e for e in rest if e.type == "tool.execution_complete")
    assert complete.tool_execution_complete.tool_call_id == call_id
    assert not complete.tool_execution_complete.success
    assert complete.tool_execution_complete.result.text_result_for_llm.startswith(INTERRUPTED)
    assert rest[-1].assistant_turn_end.reason == events_pb2.TURN_END_REASON_COMPLETED
    late = await wire_error(answer(stub, session_id, call_id, "too late"))
    assert late.reason == "ERROR_REASON_TOOL_CALL_ANSWERED"
    # The next turn runs on a history whose call has its result.
    reply = await stub.SendMessageAndWait(
        pb.SendMessageAndWaitRequest(session_id=session_id, prompt="and now?")
    )
    assert reply.turn_end.assistant_turn_end.reason == events_pb2.TURN_END_REASON_COMPLETED


async def test_resuming_with_pending_work_leaves_the_call_open(stub: Stub) -> None:
    session_id = await new_session(stub)
    await ask(stub, session_id, 'call get_weather {"city": "Kyiv"}')
    events = await events_until(stub, session_id, "external_tool.requested")
    call_id = events[-1].external_tool_requested.tool_call_id
    resumed = await stub.ResumeSession(
        pb.ResumeSessionRequest(session_id=session_id, continue_pending_work=True)
    )
    assert [c.tool_call_id for c in resumed.session.pending_tool_calls] == [call_id]
    assert (await answer(stub, session_id, call_id, "mild")).recorded


async def test_an_abort_closes_open_calls_with_a_result(stub: Stub) -> None:
    session_id = await new_session(stub)
    await ask(stub, session_id, 'call get_weather {"city": "Baku"}')
    events = await events_until(stub, session_id, "external_tool.requested")
    assert (await stub.AbortTurn(pb.AbortTurnRequest(session_id=session_id))).aborted
    rest = await events_until(stub, session_id, "assistant.turn_end", after=events[-1].sequence)
    assert [e.type for e in rest] == ["abort", "tool.execution_complete", "assistant.turn_end"]
    assert rest[1].tool_execution_complete.result.text_result_for_llm.startswith(INTERRUPTED)
    metadata = (await stub.GetSession(pb.GetSessionRequest(session_id=session_id))).session
    assert list(metadata.pending_tool_calls) == []


@pytest.mark.parametrize(
    ("tools", "words"),
    [
        ([events_pb2.ToolDefinition(name="get weather")], "not a valid tool name"),
        ([WEATHER, WEATHER], "declared twice"),
        ([events_pb2.ToolDefinition(name="t", parameters_json_schema="{")], "is not JSON"),
        (
            [events_pb2.ToolDefinition(name="t", parameters_json_schema='{"type": "string"}')],
            "JSON schema of an object",
        ),
        ([events_pb2.ToolDefinition(name="t", parameters_json_schema="[]")], "of an object"),
    ],
)
async def test_bad_tool_declarations_are_refused_with_the_reason(
    stub: Stub, tools: list[events_pb2.ToolDefinition], words: str
) -> None:
    error = await wire_error(
        stub.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(tools=tools)))
    )
    assert (error.code, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_TOOL",
    )
    assert words in error.details and "config.tools[" in error.details
    session_id = await new_session(stub)
    on_resume = await wire_error(
        stub.ResumeSession(pb.ResumeSessionRequest(session_id=session_id, tools=tools))
    )
    assert on_resume.reason == "ERROR_REASON_INVALID_TOOL"


def daemon_with_config(root: Path, text: str) -> DaemonProcess:
    config = root / "config" / "copilotd" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(text)
    return DaemonProcess(root).start()


async def test_an_unanswered_call_times_out_with_a_synthetic_result(short_tmp: Path) -> None:
    daemon = daemon_with_config(short_tmp, '[tools]\npending_timeout = "1s"\n')
    try:
        async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
            stub = copilot_pb2_grpc.CopilotServiceStub(channel)
            session_id = await new_session(stub)
            await ask(stub, session_id, 'call get_weather {"city": "Nuuk"}')
            events = await events_until(stub, session_id, "assistant.turn_end")
    finally:
        daemon.kill()
    complete = next(e for e in events if e.type == "tool.execution_complete")
    result = complete.tool_execution_complete.result
    assert result.result_type == "timeout"
    assert result.text_result_for_llm.startswith(INTERRUPTED)
    assert "1 s" in result.text_result_for_llm
    assert events[-1].assistant_turn_end.reason == events_pb2.TURN_END_REASON_COMPLETED


async def test_a_turn_past_its_rounds_fails_clearly_without_recording_the_calls(
    short_tmp: Path,
) -> None:
    daemon = daemon_with_config(short_tmp, "[tools]\nmax_rounds = 1\n")
    try:
        async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
            stub = copilot_pb2_grpc.CopilotServiceStub(channel)
            session_id = await new_session(stub)
            reply = await stub.SendMessageAndWait(
                pb.SendMessageAndWaitRequest(
                    session_id=session_id, prompt='call get_weather {"city": "Lagos"}'
                )
            )
            history = (await stub.ListEvents(pb.ListEventsRequest(session_id=session_id))).events
    finally:
        daemon.kill()
    assert reply.error.session_error.error_type == "tool_rounds_exceeded"
    assert "max_rounds" in reply.error.session_error.message
    assert not any(e.type.startswith("tool.") for e in history)


async def test_a_tool_client_attaching_with_bad_declarations_is_refused(stub: Stub) -> None:
    session_id = await new_session(stub)
    bad_clients = {
        "client_id is empty": (pb.ToolClient(tools=[WEATHER]), "ERROR_REASON_INVALID_ARGUMENT"),
        "tool_client.tools[1].name: tool 'get_weather' is declared twice": (
            pb.ToolClient(client_id="c", tools=[WEATHER, WEATHER]),
            "ERROR_REASON_INVALID_TOOL",
        ),
        "tool_client.client_id is 200 bytes": (
            pb.ToolClient(client_id="c" * 200),
            "ERROR_REASON_INVALID_ARGUMENT",
        ),
    }
    for message, (tool_client, reason) in bad_clients.items():
        request = pb.StreamEventsRequest(session_id=session_id, tool_client=tool_client)
        first: Awaitable[pb.StreamEventsResponse] = read_response(stub.StreamEvents(request))
        error = await wire_error(first)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert message in error.details
