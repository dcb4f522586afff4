"""Sessions with tool calls through export, import, history reads and ``sessions show``.

The daemon is real; its offline model calls the declared tool for the prompt
line ``call get_weather {...}``, and the tool has no handler, so each call
waits until the test answers it (or leaves it open on purpose).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from copilot_client import CopilotClient, CopilotSession, SessionEvent, Tool
from copilot_client.proto.admin.v1 import admin_pb2, admin_pb2_grpc
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc, events_pb2
from tests.support.cli import copilotd, ok, one_line_error
from tests.support.daemon_process import DaemonProcess
from tests.support.wire import wire_error

PROMPT = 'call get_weather {"city": "Paris"}'
# Run without asking (permissions are tested in test_tool_permissions*.py).
WEATHER = Tool("get_weather", "The weather in a city", {"type": "object"}, skip_permission=True)


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[CopilotClient]:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        yield client


async def ask_tool(session: CopilotSession, waits_as: str = "external_tool.requested") -> str:
    """Send the prompt and return the id of the call that then waits (for a result,
    or with ``waits_as="permission.requested"`` for a decision)."""
    requested: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_event(event: SessionEvent) -> None:
        if event.type_name == waits_as and not requested.done():
            requested.set_result(event.data.tool_call_id or "")

    unsubscribe = session.on(on_event)
    try:
        await session.send(PROMPT)
        return await requested
    finally:
        unsubscribe()


async def answered_session(client: CopilotClient, session_id: str) -> str:
    """A session whose one tool call was answered and whose turn ended; the call id."""
    session = await client.create_session(session_id=session_id, tools=[WEATHER])
    idle = asyncio.Event()
    session.on(lambda event: idle.set() if event.type_name == "session.idle" else None)
    call_id = await ask_tool(session)
    assert await session.handle_pending_tool_call(call_id, "sunny in Paris")
    await idle.wait()
    await session.destroy()
    return call_id


def export_lines(daemon: DaemonProcess, path: Path, *session_ids: str) -> list[str]:
    ok(copilotd(daemon, "export", *session_ids, "-o", str(path)))
    return path.read_text().splitlines()


def calls_and_results(events: list[SessionEvent]) -> tuple[Counter[str], Counter[str]]:
    starts = Counter(
        e.proto.tool_execution_start.tool_call_id
        for e in events
        if e.type_name == "tool.execution_start"
    )
    completes = Counter(
        e.proto.tool_execution_complete.tool_call_id
        for e in events
        if e.type_name == "tool.execution_complete"
    )
    return starts, completes


async def test_a_session_with_tool_calls_survives_export_and_import_byte_for_byte(
    daemon: DaemonProcess, client: CopilotClient, tmp_path: Path
) -> None:
    call_id = await answered_session(client, "weather")
    first = export_lines(daemon, tmp_path / "first.jsonl", "weather")
    session_line = json.loads(first[1])["session"]
    assert [tool["name"] for tool in session_line["tools"]] == ["get_weather"]
    assert "pending_tool_calls" not in session_line
    kinds = [json.loads(line)["event"]["type"] for line in first[2:-1]]
    assert kinds.count("tool.execution_start") == kinds.count("tool.execution_complete") == 1

    ok(copilotd(daemon, "sessions", "delete", "--yes", "weather"))
    ok(copilotd(daemon, "import", str(tmp_path / "first.jsonl")))
    second = export_lines(daemon, tmp_path / "second.jsonl", "weather")
    assert second[1:] == first[1:]  # all but the header's export time

    # History reads return the tool events with their data.
    events = await client.get_messages("weather")
    [start] = [e for e in events if e.type_name == "tool.execution_start"]
    [complete] = [e for e in events if e.type_name == "tool.execution_complete"]
    assert start.proto.tool_execution_start.tool_name == "get_weather"
    assert json.loads(start.proto.tool_execution_start.arguments_json) == {"city": "Paris"}
    result = complete.proto.tool_execution_complete
    assert (result.tool_call_id, result.success) == (call_id, True)
    assert result.result.text_result_for_llm == "sunny in Paris"
    assert (start.data.tool_call_id, start.data.tool_name, start.data.arguments_json) == (
        call_id,
        "get_weather",
        '{"city": "Paris"}',
    )
    assert (complete.data.tool_call_id, complete.data.tool_name, complete.data.success) == (
        call_id,
        "get_weather",
        True,
    )
    assert (complete.data.result_text, complete.data.result_type) == ("sunny in Paris", "success")
    # The imported session goes on with the tool round in its context.
    session = await client.resume_session("weather", tools=[WEATHER])
    answer = await session.send_and_wait("and tomorrow?")
    assert answer is not None


async def test_an_export_taken_while_a_call_waits_imports_with_the_call_closed(
    daemon: DaemonProcess, client: CopilotClient, tmp_path: Path
) -> None:
    session = await client.create_session(session_id="waiting", tools=[WEATHER])
    call_id = await ask_tool(session)
    lines = export_lines(daemon, tmp_path / "waiting.jsonl", "waiting")
    assert json.loads(lines[1])["session"]["pending_tool_calls"][0]["tool_call_id"] == call_id

    report = ok(copilotd(daemon, "import", "--rename", str(tmp_path / "waiting.jsonl")))
    assert "marked interrupted" in report
    metadata = await client.get_session_metadata("waiting-imported")
    assert metadata is not None
    assert not metadata.turn_running and metadata.pending_tool_calls == ()
    assert [tool.name for tool in metadata.tools] == ["get_weather"]
    events = await client.get_messages("waiting-imported")
    starts, completes = calls_and_results(events)
    assert starts == completes == Counter({call_id: 1})  # every call has exactly one result
    complete, end = events[-2:]
    data = complete.proto.tool_execution_complete
    assert (data.tool_name, data.success, data.turn_id) == (
        "get_weather",
        False,
        end.proto.assistant_turn_end.turn_id,
    )
    assert data.result.text_result_for_llm.startswith("interrupted: no client answered")
    assert end.type_name == "assistant.turn_end"
    # The imported history is one a model accepts: the next turn runs.
    imported = await client.resume_session("waiting-imported", tools=[WEATHER])
    answer = await imported.send_and_wait("and now?")
    assert answer is not None
    # The original still waits for its call, untouched by the import.
    assert [call.tool_call_id for call in await session.pending_tool_calls()] == [call_id]
    original = await client.get_session_metadata("waiting")
    assert original is not None
    [waiting] = original.pending_tool_calls
    assert (waiting.tool_call_id, waiting.tool_name, waiting.arguments) == (
        call_id,
        "get_weather",
        {"city": "Paris"},
    )


async def test_an_export_taken_while_a_permission_request_waits_imports_it_denied(
    daemon: DaemonProcess, client: CopilotClient, tmp_path: Path
) -> None:
    guarded = Tool("get_weather", "The weather in a city", {"type": "object"})
    session = await client.create_session(session_id="asking", tools=[guarded])
    call_id = await ask_tool(session, "permission.requested")
    export_lines(daemon, tmp_path / "asking.jsonl", "asking")

    ok(copilotd(daemon, "import", "--rename", str(tmp_path / "asking.jsonl")))
    metadata = await client.get_session_metadata("asking-imported")
    assert metadata is not None and metadata.pending_tool_calls == ()
    events = await client.get_messages("asking-imported")
    decision, complete, end = events[-3:]
    assert decision.type_name == "permission.completed"
    assert (
        decision.proto.permission_completed.tool_call_id,
        decision.proto.permission_completed.approved,
    ) == (call_id, False)
    assert decision.proto.permission_completed.reason.startswith("interrupted: no client answered")
    assert (complete.data.tool_call_id, complete.data.success) == (call_id, False)
    assert end.data.reason == "interrupted"
    # The imported history is one a model accepts: the next turn runs.
    imported = await client.resume_session("asking-imported")
    assert await imported.send_and_wait("and now?") is not None


async def test_import_refuses_a_result_without_its_call(
    daemon: DaemonProcess, client: CopilotClient, tmp_path: Path
) -> None:
    call_id = await answered_session(client, "weather")
    lines = export_lines(daemon, tmp_path / "weather.jsonl", "weather")
    ok(copilotd(daemon, "sessions", "delete", "--yes", "weather"))
    (number,) = [
        index
        for index, line in enumerate(lines)
        if json.loads(line).get("event", {}).get("type") == "tool.execution_complete"
    ]
    lines[number] = lines[number].replace(call_id, "nope")
    orphan = tmp_path / "orphan.jsonl"
    orphan.write_text("\n".join(lines) + "\n")
    line = one_line_error(copilotd(daemon, "import", str(orphan)))
    assert f"event {number - 1}: tool.execution_complete for call 'nope'" in line
    assert "no tool.execution_start" in line
    assert await client.list_sessions() == []


async def test_show_prints_tool_calls_results_and_waiting_calls(
    daemon: DaemonProcess, client: CopilotClient
) -> None:
    answered = await answered_session(client, "weather")
    session = await client.resume_session("weather", tools=[WEATHER])
    waiting = await ask_tool(session)

    head, transcript = ok(copilotd(daemon, "sessions", "show", "weather")).split("\n\n", 1)
    assert "tools:        get_weather" in head.splitlines()
    assert f'waiting call: get_weather {{"city": "Paris"}} [{waiting}]' in head.splitlines()
    lines = [line.split("] ", 1)[1] for line in transcript.splitlines()]
    assert lines[:6] == [
        "-- session started (model offline)",
        f"user: {PROMPT}",
        f'tool call get_weather {{"city": "Paris"}} [{answered}]',
        f"tool result get_weather [{answered}]: sunny in Paris",
        'assistant: get_weather returned: "sunny in Paris".',
        "-- resumed",
    ]
    assert lines[6:] == [
        f"user: {PROMPT}",
        f'tool call get_weather {{"city": "Paris"}} [{waiting}]',
    ]

    shown = json.loads(ok(copilotd(daemon, "sessions", "show", "weather", "--json")))
    assert shown["session"]["tools"] == ["get_weather"]
    assert [c["tool_call_id"] for c in shown["session"]["pending_tool_calls"]] == [waiting]

    # A call closed without an answer says how it ended.
    await session.abort()
    last = ok(copilotd(daemon, "sessions", "show", "weather")).splitlines()
    result = next(line for line in last if f"tool result get_weather [{waiting}]" in line)
    assert f"[{waiting}] failure: interrupted: no client answered (turn aborted" in result


def chained(events: list[events_pb2.SessionEvent]) -> list[events_pb2.SessionEvent]:
    """``events`` renumbered and re-linked, so only the tool pairing can be at fault."""
    previous = ""
    for sequence, event in enumerate(events, start=1):
        event.sequence, event.parent_id, previous = sequence, previous, event.id
    return events


def copy_with_new_id(event: events_pb2.SessionEvent) -> events_pb2.SessionEvent:
    copy = events_pb2.SessionEvent()
    copy.CopyFrom(event)
    copy.id = f"{event.id}-again"
    return copy


async def test_import_refuses_histories_whose_calls_do_not_pair_up(
    daemon: DaemonProcess, client: CopilotClient
) -> None:
    call_id = await answered_session(client, "weather")
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        sessions = copilot_pb2_grpc.CopilotServiceStub(channel)
        admin = admin_pb2_grpc.CopilotAdminServiceStub(channel)
        metadata = (await sessions.GetSession(pb.GetSessionRequest(session_id="weather"))).session
        events = list(
            (await sessions.ListEvents(pb.ListEventsRequest(session_id="weather"))).events
        )
        start = next(i for i, e in enumerate(events) if e.type == "tool.execution_start")
        complete = next(i for i, e in enumerate(events) if e.type == "tool.execution_complete")
        histories = {
            "a second time; a tool call has exactly one result": [
                *events[: complete + 1],
                copy_with_new_id(events[complete]),
                *events[complete + 1 :],
            ],
            "a second time; each tool call id is used once": [
                *events[: complete + 1],
                copy_with_new_id(events[start]),
                *events[complete + 1 :],
            ],
            f"while its tool call {call_id!r} has no tool.execution_complete": [
                *events[:complete],
                *events[complete + 1 :],
            ],
        }
        for expected, history in histories.items():
            header = admin_pb2.ImportHeader(
                metadata=metadata,
                event_count=len(history),
                on_conflict=admin_pb2.IMPORT_CONFLICT_RENAME,
            )

            async def requests(
                header: admin_pb2.ImportHeader = header,
                history: list[events_pb2.SessionEvent] = history,
            ) -> AsyncIterator[admin_pb2.ImportSessionRequest]:
                yield admin_pb2.ImportSessionRequest(header=header, events=chained(history))

            error = await wire_error(admin.ImportSession(requests()))
            assert (error.code, error.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "ERROR_REASON_INVALID_IMPORT",
            )
            assert expected in error.details
    assert [m.session_id for m in await client.list_sessions()] == ["weather"]
