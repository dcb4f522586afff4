"""Permission requests decided by clients: a real daemon, real client processes
(tests/support/clients/tool_worker.py) and the client in this process.

The offline model calls ``get_weather`` for the prompt line
``call get_weather {...}``; the tool is declared without ``skip_permission``
here, so every call waits for a decision first.
"""

from __future__ import annotations

import asyncio

import pytest

from copilot_client import (
    CopilotClient,
    CopilotSession,
    FailedPreconditionError,
    PermissionAnsweredError,
    PermissionInvocation,
    PermissionRequest,
    PermissionRequestResult,
    SessionEvent,
    Tool,
    ToolInvocation,
    UnknownPermissionRequestError,
)
from copilot_client._permissions import NO_HANDLER_REASON
from tests.support.daemon_process import DaemonProcess
from tests.test_tools_clients import PROMPT, ToolWorker, completes, read, start
from tests.test_tools_clients import workers as workers  # a fixture

GUARDED = Tool("get_weather", "The weather in a city", {"type": "object"})


def decisions(events: list[SessionEvent]) -> list[tuple[bool, str]]:
    return [
        (e.proto.permission_completed.approved, e.proto.permission_completed.reason)
        for e in events
        if e.type_name == "permission.completed"
    ]


async def test_a_client_without_a_permission_handler_denies(
    daemon: DaemonProcess, workers: list[ToolWorker]
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[GUARDED])
        await start(workers, daemon, session.session_id, "sunny", "continue", "none")
        answer = await session.send_and_wait(PROMPT)
        events = await session.get_events()
    assert decisions(events) == [(False, NO_HANDLER_REASON)]
    [complete] = completes(events)
    result = complete.proto.tool_execution_complete.result
    assert (result.result_type, result.text_result_for_llm) == (
        "denied",
        f"permission denied: {NO_HANDLER_REASON}",
    )
    assert not any(e.type_name == "external_tool.requested" for e in events)
    assert answer is not None and answer.data.content is not None
    assert "permission denied" in answer.data.content


async def test_a_client_approving_all_runs_the_tool(
    daemon: DaemonProcess, workers: list[ToolWorker]
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[GUARDED])
        worker = await start(
            workers, daemon, session.session_id, "sunny", "continue", "approve_all"
        )
        answer = await session.send_and_wait(PROMPT)
        events = await session.get_events()
    assert (await read(worker))["running"]
    assert decisions(events) == [(True, "")]
    assert answer is not None
    assert answer.data.content == 'get_weather returned: "sunny in Paris".'


async def until(session: CopilotSession, event_type: str) -> None:
    """Return once ``session`` sees an event of ``event_type`` (live or replayed)."""
    seen = asyncio.Event()
    unsubscribe = session.on(lambda event: seen.set() if event.type_name == event_type else None)
    await session.attach()
    try:
        await seen.wait()
    finally:
        unsubscribe()


async def test_an_open_request_is_decided_by_a_client_after_a_daemon_restart(
    daemon: DaemonProcess, workers: list[ToolWorker]
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[GUARDED])
        session_id = session.session_id
        requested = asyncio.create_task(until(session, "permission.requested"))
        await session.send(PROMPT)
        await requested
    daemon.restart_after_kill()
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        # Taken over by nobody here (no tools): the worker below decides.
        watcher = await client.resume_session(session_id, continue_pending_work=True)
        ended = asyncio.create_task(until(watcher, "assistant.turn_end"))
        worker = await start(workers, daemon, session_id, "mild", "continue", "approve_all")
        assert (await read(worker))["running"]
        await ended
        events = await watcher.get_events()
    assert decisions(events) == [(True, "")]
    [complete] = completes(events)
    assert complete.proto.tool_execution_complete.result.text_result_for_llm == "mild in Paris"


async def test_a_handler_sees_the_request_and_its_denial_reaches_the_model(
    daemon: DaemonProcess,
) -> None:
    seen: list[tuple[PermissionRequest, PermissionInvocation]] = []

    async def careful(
        request: PermissionRequest, invocation: PermissionInvocation
    ) -> PermissionRequestResult:
        seen.append((request, invocation))
        return PermissionRequestResult("denied-interactively-by-user", "not in Paris")

    ran: list[ToolInvocation] = []
    tool = Tool("get_weather", "The weather", {"type": "object"}, ran.append)
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[tool], on_permission_request=careful)
        answer = await session.send_and_wait(PROMPT)
        events = await session.get_events()
    [(request, invocation)] = seen
    assert (request.tool_name, request.arguments, request.kind) == (
        "get_weather",
        {"city": "Paris"},
        "custom-tool",
    )
    assert request.request_id == request.tool_call_id
    assert invocation.session_id == session.session_id
    assert decisions(events) == [(False, "not in Paris")]
    assert ran == []
    assert answer is not None
    assert answer.data.content == 'get_weather returned: "permission denied: not in Paris".'


async def test_a_tool_with_skip_permission_runs_without_asking(daemon: DaemonProcess) -> None:
    asked: list[PermissionRequest] = []
    tool = Tool(
        "get_weather", "The weather", {"type": "object"}, lambda _: "fine", skip_permission=True
    )
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(
            tools=[tool], on_permission_request=lambda request, _: asked.append(request)
        )
        answer = await session.send_and_wait(PROMPT)
        events = await session.get_events()
    assert asked == []
    assert decisions(events) == []
    assert answer is not None
    assert answer.data.content == 'get_weather returned: "fine".'


async def test_an_app_decides_a_declared_tool_s_request_itself(daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[GUARDED])  # declared, no handler
        requested = asyncio.create_task(until(session, "permission.requested"))
        await session.send(PROMPT)
        await requested
        [call] = await session.pending_tool_calls()
        with pytest.raises(FailedPreconditionError, match="waits for a permission decision"):
            await session.handle_pending_tool_call(call.tool_call_id, "too early")
        assert await session.handle_pending_permission(call.tool_call_id, True)
        assert not await session.handle_pending_permission(call.tool_call_id, True)
        with pytest.raises(PermissionAnsweredError):
            await session.handle_pending_permission(call.tool_call_id, False)
        with pytest.raises(UnknownPermissionRequestError):
            await session.handle_pending_permission("no-such-request", True)
        ended = asyncio.create_task(until(session, "assistant.turn_end"))
        assert await session.handle_pending_tool_call(call.tool_call_id, "cloudy")
        await ended
        events = await session.get_events()
    assert decisions(events) == [(True, "")]
    assert events[-1].type_name == "assistant.turn_end"


async def test_a_request_goes_to_a_client_with_a_permission_handler_first(
    daemon: DaemonProcess, workers: list[ToolWorker]
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[GUARDED])
        # Attached first, and would deny by default: asked only if nobody else decides.
        runner = await start(workers, daemon, session.session_id, "sunny", "continue", "none")
        decider = await start(
            workers, daemon, session.session_id, "rainy", "continue", "approve_all"
        )
        answer = await session.send_and_wait(PROMPT)
        events = await session.get_events()
    assert decisions(events) == [(True, "")]
    # The call itself goes to the holder attached first.
    assert answer is not None
    assert answer.data.content == 'get_weather returned: "sunny in Paris".'
    assert (len(runner.runs()), decider.runs()) == (1, [])


async def test_a_request_goes_to_another_decider_when_its_client_is_killed(
    daemon: DaemonProcess, workers: list[ToolWorker]
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[GUARDED])
        asked = await start(workers, daemon, session.session_id, "sunny", "continue", "block")
        other = await start(workers, daemon, session.session_id, "rainy", "continue", "approve_all")
        waiting = asyncio.create_task(session.send_and_wait(PROMPT))
        request_id = (await read(asked))["asked"]
        asked.kill()  # SIGKILL while its handler has not decided
        answer = await waiting
        events = await session.get_events()
    assert decisions(events) == [(True, "")]
    assert answer is not None
    assert answer.data.content == 'get_weather returned: "rainy in Paris".'
    assert other.runs() == [request_id]
