"""Tool clients attached to another daemon of the same PostgreSQL store: real daemons,
one database. The turn runs on daemon A; a client holding the tool attached
through daemon B is offered to the model, runs the call, and when it (or its
daemon) goes away, another holder does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import events_pb2
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import Call, FakeModelServer, calls, stream
from tests.test_compaction_daemons import server as server  # a fixture
from tests.test_compaction_daemons import two as two  # a fixture
from tests.test_multi_daemon import WAIT, channel_to, check_log, events_of, stub
from tests.test_multi_daemon import dsn as dsn  # a fixture
from tests.test_multi_daemon_relay import (
    CALL,
    COMPLETED,
    logged,
    session_with_tool,
    wait_for,
    weather_tool,
)
from tests.test_multi_daemon_relay import pair as pair  # a fixture
from tests.test_tools_clients import ToolWorker, read, start
from tests.test_tools_clients import workers as workers  # a fixture

ASSIGNED = "external_tool.assigned"


async def attached_client(
    channel: grpc.aio.Channel, session_id: str, client_id: str, *, deciding: bool = False
) -> AsyncIterator[events_pb2.SessionEvent]:
    """A client holding the weather tool attached through ``channel``'s daemon (``deciding``:
    the tool asks permission, which this client decides); returned once its first events
    arrived, when every daemon counts it."""
    tool_client = pb.ToolClient(
        client_id=client_id,
        tools=[weather_tool(skip_permission=not deciding)],
        permission_tools=["get_weather"] if deciding else [],
        permission_handler=deciding,
    )
    events = events_of(
        stub(channel).StreamEvents(
            pb.StreamEventsRequest(session_id=session_id, after_sequence=0, tool_client=tool_client)
        )
    )
    await wait_for(events, "session.start")
    return events


async def toolless_session(channel: grpc.aio.Channel) -> str:
    created = await stub(channel).CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig()))
    return created.session.session_id


def send_and_wait(
    channel: grpc.aio.Channel, session_id: str
) -> asyncio.Future[pb.SendMessageAndWaitResponse]:
    return asyncio.ensure_future(
        stub(channel).SendMessageAndWait(
            pb.SendMessageAndWaitRequest(session_id=session_id, prompt=CALL, message_id="m1"),
            timeout=WAIT,
        )
    )


async def answer(channel: grpc.aio.Channel, session_id: str, call_id: str, text: str) -> None:
    recorded = await stub(channel).HandlePendingToolCall(
        pb.HandlePendingToolCallRequest(
            session_id=session_id,
            tool_call_id=call_id,
            result=events_pb2.ToolResult(text_result_for_llm=text),
        ),
        timeout=WAIT,
    )
    assert recorded.recorded


async def test_a_tool_held_only_by_a_client_of_another_daemon_is_offered_and_run_there(
    pair: list[DaemonProcess],
) -> None:
    a, b = (channel_to(daemon) for daemon in pair)
    try:
        session_id = await toolless_session(a)
        on_b = await attached_client(b, session_id, "client-b")
        done = send_and_wait(a, session_id)  # the turn runs on A
        # The offline model calls get_weather only when it is offered: B's client's tool was.
        assigned = await wait_for(on_b, ASSIGNED)
        assert assigned.external_tool_assigned.tool_name == "get_weather"
        await answer(b, session_id, assigned.external_tool_assigned.tool_call_id, "sunny")
        finished = await asyncio.wait_for(done, WAIT)
        assert finished.turn_end.assistant_turn_end.reason == COMPLETED
        assert '"sunny"' in finished.answer.assistant_message.content
        check_log(await logged(a, session_id))
    finally:
        await a.close()
        await b.close()


async def test_the_model_is_offered_the_tool_of_a_client_of_another_daemon(
    two: list[DaemonProcess], server: FakeModelServer
) -> None:
    """Through a strict provider: the first request lists the tool, the second carries
    the result B's client gave."""
    a, b = (channel_to(daemon) for daemon in two)
    try:
        server.script(calls(Call("get_weather", {"city": "Paris"})), stream("Sunny, it says."))
        session_id = await toolless_session(a)
        on_b = await attached_client(b, session_id, "client-b")
        done = send_and_wait(a, session_id)
        assigned = await wait_for(on_b, ASSIGNED)
        await answer(b, session_id, assigned.external_tool_assigned.tool_call_id, "sunny")
        finished = await asyncio.wait_for(done, WAIT)
        assert finished.answer.assistant_message.content == "Sunny, it says."
        first, second = server.requests
        assert [tool["function"]["name"] for tool in first.body["tools"]] == ["get_weather"]
        [result] = [m for m in second.messages if m["role"] == "tool"]
        assert result["content"] == "sunny"
        assert (first.outcome, second.outcome) == ("completed", "completed")
    finally:
        await a.close()
        await b.close()


async def test_a_permission_request_goes_to_the_deciding_client_of_another_daemon(
    pair: list[DaemonProcess],
) -> None:
    a, b = (channel_to(daemon) for daemon in pair)
    try:
        session_id = await toolless_session(a)
        on_b = await attached_client(b, session_id, "client-b", deciding=True)
        done = send_and_wait(a, session_id)
        asked = await wait_for(on_b, "permission.assigned")
        request_id = asked.permission_assigned.request_id
        decided = await stub(b).HandlePendingPermission(
            pb.HandlePendingPermissionRequest(
                session_id=session_id, request_id=request_id, approved=True, reason="fine"
            ),
            timeout=WAIT,
        )
        assert decided.recorded
        # Approved, the call itself goes to the same client, through B again.
        assigned = await wait_for(on_b, ASSIGNED)
        assert assigned.external_tool_assigned.tool_call_id == request_id
        await answer(b, session_id, request_id, "hail")
        finished = await asyncio.wait_for(done, WAIT)
        assert '"hail"' in finished.answer.assistant_message.content
    finally:
        await a.close()
        await b.close()


async def test_a_call_whose_remote_client_was_killed_goes_to_a_holder_on_the_turn_s_daemon(
    pair: list[DaemonProcess], workers: list[ToolWorker]
) -> None:
    daemon_a, daemon_b = pair
    a = channel_to(daemon_a)
    try:
        session_id = await toolless_session(a)
        first = await start(workers, daemon_b, session_id, "block", "continue")
        done = send_and_wait(a, session_id)
        call_id = (await read(first))["running"]  # B's client runs A's call
        second = await start(workers, daemon_a, session_id, "rain", "continue")
        first.kill()  # SIGKILL while its handler blocks
        assert (await read(second))["running"] == call_id
        finished = await asyncio.wait_for(done, WAIT)
        assert '"rain in Paris"' in finished.answer.assistant_message.content
        assert first.runs() == [call_id]
    finally:
        await a.close()


async def test_the_clients_of_a_killed_daemon_stop_counting_and_its_call_goes_elsewhere(
    pair: list[DaemonProcess],
) -> None:
    survivor, doomed = pair
    a, b = channel_to(survivor), channel_to(doomed)
    try:
        session_id = await toolless_session(a)
        on_b = await attached_client(b, session_id, "client-b")
        done = send_and_wait(a, session_id)
        first = await wait_for(on_b, ASSIGNED)
        on_a = await attached_client(a, session_id, "client-a")
        doomed.kill()  # its rows are never removed: they expire
        again = await wait_for(on_a, ASSIGNED)
        call_id = first.external_tool_assigned.tool_call_id
        assert again.external_tool_assigned.tool_call_id == call_id
        await answer(a, session_id, call_id, "fog")
        finished = await asyncio.wait_for(done, WAIT)
        assert '"fog"' in finished.answer.assistant_message.content
    finally:
        await a.close()
        await b.close()


async def test_a_resume_without_pending_work_through_another_daemon_closes_the_turn_s_calls(
    pair: list[DaemonProcess],
) -> None:
    a, b = (channel_to(daemon) for daemon in pair)
    try:
        session_id, on_a = await session_with_tool(a, skip_permission=True)
        done = send_and_wait(a, session_id)
        await wait_for(on_a, "external_tool.requested")  # A's turn waits for a result
        await stub(b).ResumeSession(
            pb.ResumeSessionRequest(session_id=session_id, continue_pending_work=False),
            timeout=WAIT,
        )
        # A closed the call as a resume on A would, and its turn went on to its end.
        finished = await asyncio.wait_for(done, WAIT)
        assert finished.turn_end.assistant_turn_end.reason == COMPLETED
        events = await logged(b, session_id)
        check_log(events)
        [complete] = [e for e in events if e.type == "tool.execution_complete"]
        assert "resumed without its pending work" in str(complete.tool_execution_complete.result)
    finally:
        await a.close()
        await b.close()
