"""Calls for a turn that runs on another daemon of the same PostgreSQL store: real
daemons, one database. An abort, a message sent with mode=immediate, a tool
result and a permission decision sent through daemon B act on the turn that
daemon A runs, and the caller gets the answer A would have given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import events_pb2
from copilotd.sessions.scheduler import SUPERSEDED
from tests.support.daemon_process import DaemonProcess
from tests.test_multi_daemon import (
    WAIT,
    channel_to,
    check_log,
    events_of,
    start_daemons,
    stub,
)
from tests.test_multi_daemon import dsn as dsn  # a fixture

ABORTED = events_pb2.TurnEndReason.TURN_END_REASON_ABORTED
COMPLETED = events_pb2.TurnEndReason.TURN_END_REASON_COMPLETED
# The offline model calls the tool for this line, and the turn then waits for
# a client's result: it runs until answered or aborted, whatever the machine's speed.
CALL = 'call get_weather {"city": "Paris"}'


def weather_tool(*, skip_permission: bool) -> events_pb2.ToolDefinition:
    return events_pb2.ToolDefinition(
        name="get_weather",
        description="The weather in a city",
        parameters_json_schema='{"type": "object"}',
        skip_permission=skip_permission,
    )


@pytest.fixture
def pair(short_tmp: Path, dsn: str) -> Iterator[list[DaemonProcess]]:
    daemons = start_daemons(short_tmp, dsn, 2, "0.01")
    yield daemons
    for daemon in daemons:
        daemon.kill()
        print("".join(daemon.output))


async def first_of(
    events: AsyncIterator[events_pb2.SessionEvent], kind: str
) -> events_pb2.SessionEvent:
    async for event in events:
        if event.type == kind:
            return event
    raise AssertionError(f"the stream ended before a {kind} event")


async def wait_for(
    events: AsyncIterator[events_pb2.SessionEvent], kind: str
) -> events_pb2.SessionEvent:
    return await asyncio.wait_for(first_of(events, kind), WAIT)


async def session_with_tool(
    channel: grpc.aio.Channel, *, skip_permission: bool
) -> tuple[str, AsyncIterator[events_pb2.SessionEvent]]:
    """A session on ``channel``'s daemon declaring the tool, and a stream of its events there."""
    created = await stub(channel).CreateSession(
        pb.CreateSessionRequest(
            config=pb.SessionConfig(tools=[weather_tool(skip_permission=skip_permission)])
        )
    )
    session_id = created.session.session_id
    events = events_of(
        stub(channel).StreamEvents(pb.StreamEventsRequest(session_id=session_id, after_sequence=0))
    )
    return session_id, events


async def logged(channel: grpc.aio.Channel, session_id: str) -> list[events_pb2.SessionEvent]:
    listed = await stub(channel).ListEvents(
        pb.ListEventsRequest(session_id=session_id, page_size=1000)
    )
    return list(listed.events)


def ends(events: list[events_pb2.SessionEvent]) -> list[tuple[str, int, str]]:
    return [
        (
            e.assistant_turn_end.user_message_id,
            e.assistant_turn_end.reason,
            e.assistant_turn_end.message,
        )
        for e in events
        if e.type == "assistant.turn_end"
    ]


async def test_an_abort_sent_through_another_daemon_stops_the_turn_where_it_runs(
    pair: list[DaemonProcess],
) -> None:
    a, b = (channel_to(daemon) for daemon in pair)
    try:
        session_id, on_a = await session_with_tool(a, skip_permission=True)
        await stub(a).SendMessage(
            pb.SendMessageRequest(session_id=session_id, prompt=CALL, message_id="m1")
        )
        await wait_for(on_a, "external_tool.requested")  # A runs the turn, waiting for a result
        aborted = await stub(b).AbortTurn(
            pb.AbortTurnRequest(session_id=session_id, reason="stopped through B"), timeout=WAIT
        )
        assert aborted.aborted
        # A answered once the turn's end was committed, as an abort on A does.
        events = await logged(b, session_id)
        check_log(events)
        assert ends(events) == [("m1", ABORTED, "stopped through B")]
        [abort] = [e for e in events if e.type == "abort"]
        assert abort.abort.reason == "stopped through B"
        # No turn runs any more: the answer is the one A would give.
        again = await stub(b).AbortTurn(pb.AbortTurnRequest(session_id=session_id), timeout=WAIT)
        assert not again.aborted
    finally:
        await a.close()
        await b.close()


async def test_a_message_sent_immediate_through_another_daemon_supersedes_the_running_turn(
    pair: list[DaemonProcess],
) -> None:
    a, b = (channel_to(daemon) for daemon in pair)
    try:
        session_id, on_a = await session_with_tool(a, skip_permission=True)
        await stub(a).SendMessage(
            pb.SendMessageRequest(session_id=session_id, prompt=CALL, message_id="m1")
        )
        await wait_for(on_a, "external_tool.requested")
        queued = await stub(a).SendMessage(
            pb.SendMessageRequest(session_id=session_id, prompt="later", message_id="m2")
        )
        assert queued.queued
        urgent = await stub(b).SendMessageAndWait(
            pb.SendMessageAndWaitRequest(
                session_id=session_id,
                prompt="urgent",
                message_id="m3",
                mode=pb.SendMode.SEND_MODE_IMMEDIATE,
            ),
            timeout=WAIT,
        )
        assert urgent.turn_end.assistant_turn_end.reason == COMPLETED
        assert "urgent" in urgent.answer.assistant_message.content
        await wait_for(on_a, "session.idle")
        events = await logged(b, session_id)
        check_log(events)
        # The running turn ended as superseded, the urgent message ran first, then the queue.
        assert ends(events) == [
            ("m1", ABORTED, SUPERSEDED),
            ("m3", COMPLETED, ""),
            ("m2", COMPLETED, ""),
        ]
    finally:
        await a.close()
        await b.close()


def error_reason(error: grpc.aio.AioRpcError) -> str:
    return str(dict(error.trailing_metadata() or ()).get("copilot-error-reason", ""))


async def test_a_tool_result_sent_through_another_daemon_is_recorded_once(
    pair: list[DaemonProcess],
) -> None:
    a, b = (channel_to(daemon) for daemon in pair)
    try:
        session_id, on_a = await session_with_tool(a, skip_permission=True)
        # Client A, on daemon A, runs the turn and waits for its answer.
        answer = asyncio.ensure_future(
            stub(a).SendMessageAndWait(
                pb.SendMessageAndWaitRequest(session_id=session_id, prompt=CALL, message_id="m1"),
                timeout=WAIT,
            )
        )
        requested = await wait_for(on_a, "external_tool.requested")
        call_id = requested.external_tool_requested.tool_call_id
        # Client B answers through daemon B.
        sunny = events_pb2.ToolResult(text_result_for_llm="sunny")
        recorded = await stub(b).HandlePendingToolCall(
            pb.HandlePendingToolCallRequest(
                session_id=session_id, tool_call_id=call_id, result=sunny
            ),
            timeout=WAIT,
        )
        assert recorded.recorded
        done = await asyncio.wait_for(answer, WAIT)
        assert done.turn_end.assistant_turn_end.reason == COMPLETED
        assert '"sunny"' in done.answer.assistant_message.content
        # Another result through daemon A: refused, the first one recorded stays.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub(a).HandlePendingToolCall(
                pb.HandlePendingToolCallRequest(
                    session_id=session_id,
                    tool_call_id=call_id,
                    result=events_pb2.ToolResult(text_result_for_llm="rain"),
                ),
                timeout=WAIT,
            )
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_reason(refused.value) == "ERROR_REASON_TOOL_CALL_ANSWERED"
        events = await logged(b, session_id)
        check_log(events)
        completes = [e for e in events if e.type == "tool.execution_complete"]
        assert [c.tool_execution_complete.result.text_result_for_llm for c in completes] == [
            "sunny"
        ]
    finally:
        await a.close()
        await b.close()


async def test_a_permission_decided_through_another_daemon_lets_the_turn_go_on(
    pair: list[DaemonProcess],
) -> None:
    a, b = (channel_to(daemon) for daemon in pair)
    try:
        session_id, on_a = await session_with_tool(a, skip_permission=False)
        answer = asyncio.ensure_future(
            stub(a).SendMessageAndWait(
                pb.SendMessageAndWaitRequest(session_id=session_id, prompt=CALL, message_id="m1"),
                timeout=WAIT,
            )
        )
        asked = await wait_for(on_a, "permission.requested")
        request_id = asked.permission_requested.request_id
        # Answering before the decision is refused by daemon A, through B too.
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await stub(b).HandlePendingToolCall(
                pb.HandlePendingToolCallRequest(
                    session_id=session_id,
                    tool_call_id=request_id,
                    result=events_pb2.ToolResult(text_result_for_llm="too early"),
                ),
                timeout=WAIT,
            )
        assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(early.value) == "ERROR_REASON_AWAITING_PERMISSION"
        decided = await stub(b).HandlePendingPermission(
            pb.HandlePendingPermissionRequest(
                session_id=session_id, request_id=request_id, approved=True, reason="fine by B"
            ),
            timeout=WAIT,
        )
        assert decided.recorded
        requested = await wait_for(on_a, "external_tool.requested")
        await stub(b).HandlePendingToolCall(
            pb.HandlePendingToolCallRequest(
                session_id=session_id,
                tool_call_id=requested.external_tool_requested.tool_call_id,
                result=events_pb2.ToolResult(text_result_for_llm="sunny"),
            ),
            timeout=WAIT,
        )
        done = await asyncio.wait_for(answer, WAIT)
        assert done.turn_end.assistant_turn_end.reason == COMPLETED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub(a).HandlePendingPermission(
                pb.HandlePendingPermissionRequest(
                    session_id=session_id, request_id=request_id, approved=False
                ),
                timeout=WAIT,
            )
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_reason(refused.value) == "ERROR_REASON_PERMISSION_ANSWERED"
        events = await logged(b, session_id)
        [completed] = [e for e in events if e.type == "permission.completed"]
        assert (completed.permission_completed.approved, completed.permission_completed.reason) == (
            True,
            "fine by B",
        )
    finally:
        await a.close()
        await b.close()


async def test_an_abort_for_a_dead_daemon_s_turn_is_served_by_the_daemon_taking_it_over(
    pair: list[DaemonProcess],
) -> None:
    doomed, survivor = pair
    a, b = channel_to(doomed), channel_to(survivor)
    try:
        session_id, on_a = await session_with_tool(a, skip_permission=True)
        await stub(a).SendMessage(
            pb.SendMessageRequest(session_id=session_id, prompt=CALL, message_id="m1")
        )
        await wait_for(on_a, "external_tool.requested")
        doomed.kill()
        # Posted for A, which never hears it; once A's lease expires, B takes the
        # turn over (it waits for its tool call again) and serves the abort itself.
        aborted = await stub(b).AbortTurn(
            pb.AbortTurnRequest(session_id=session_id, reason="A is gone"), timeout=WAIT
        )
        assert aborted.aborted
        events = await logged(b, session_id)
        check_log(events)
        assert ends(events) == [("m1", ABORTED, "A is gone")]
        assert "waits again" in survivor.wait_for_output("waits again")
    finally:
        await a.close()
        await b.close()
