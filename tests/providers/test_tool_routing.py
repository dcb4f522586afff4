"""What a strict model server is offered and asked when tools are routed to clients:
only the tools of attached clients (and those answered by hand), and no
model call after a terminal tool's result.
"""

from __future__ import annotations

import grpc

from copilot_client import SessionEventType, Tool, ToolInvocation
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc, events_pb2
from tests.providers.test_tool_calls import declared, history, refused
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import Call, FakeModelServer, calls, stream
from tests.support.model_providers import connect
from tests.support.session_events import Recorder
from tests.test_tools_clients import ToolWorker, start
from tests.test_tools_clients import workers as workers  # a fixture


async def test_the_model_is_offered_only_tools_an_attached_client_holds(
    daemon: DaemonProcess, server: FakeModelServer, workers: list[ToolWorker]
) -> None:
    server.script(stream("Nothing to call."))
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        created = await stub.CreateSession(
            pb.CreateSessionRequest(config=pb.SessionConfig(model="gpt-test"))
        )
        session_id = created.session.session_id
        await start(workers, daemon, session_id, "sunny", "continue")  # runs get_weather
        # Declared after the worker's resume (a resume with tools replaces the
        # declarations): one answered by hand, one whose handler nobody attached holds.
        by_hand = events_pb2.ToolDefinition(name="get_time", skip_permission=True)
        unheld = events_pb2.ToolDefinition(name="get_news", has_handler=True)
        await stub.ResumeSession(
            pb.ResumeSessionRequest(session_id=session_id, tools=[by_hand, unheld])
        )
        await stub.SendMessageAndWait(
            pb.SendMessageAndWaitRequest(session_id=session_id, prompt="Hi")
        )
    [request] = server.requests
    assert [name for name, _, _ in declared(request)] == ["get_time", "get_weather"]


async def test_a_terminal_tool_s_result_ends_the_turn_without_another_model_call(
    daemon: DaemonProcess, server: FakeModelServer
) -> None:
    ran: list[ToolInvocation] = []

    def finish(invocation: ToolInvocation) -> str:
        ran.append(invocation)
        return "report filed"

    terminal = Tool(
        "file_report", "Files the report", None, finish, skip_permission=True, is_terminal=True
    )
    server.script(
        calls(Call("file_report", {"title": "Q3"}), text=("Filing.",)), stream("Welcome.")
    )
    async with connect(daemon) as client:
        session = await client.create_session(tools=[terminal])
        answer = await session.send_and_wait("File the report")
        assert len(server.requests) == 1  # no model round after the terminal result
        follow_up = await session.send_and_wait("Thanks")
        events = await session.get_events()
    assert [invocation.arguments for invocation in ran] == [{"title": "Q3"}]
    assert answer is not None and answer.data.content == "report filed"
    assert follow_up is not None and follow_up.data.content == "Welcome."
    ends = [e.data.reason for e in events if e.type_name == "assistant.turn_end"]
    assert ends == ["completed", "completed"]
    # The next turn's history carries the call, its result and the answer it made.
    assert history(server.requests[1]) == [
        ("user", "File the report"),
        ("assistant", "Filing.", [("call_file_report_0", "file_report", {"title": "Q3"})]),
        ("tool", "call_file_report_0", "report filed"),
        ("assistant", "report filed", []),
        ("user", "Thanks"),
    ]
    assert refused(server) == []


async def test_anthropic_is_sent_the_called_tools_bare_once_nobody_offers_them(
    daemon: DaemonProcess, server: FakeModelServer
) -> None:
    by_hand = Tool("get_weather", "The weather", None, skip_permission=True)
    server.script(calls(Call("get_weather", {"city": "Rome"})), stream("Sunny."), stream("Bye."))
    async with connect(daemon) as client:
        session = await client.create_session(model="claude-test", tools=[by_hand])
        recorder = Recorder()
        session.on(recorder)
        await session.send("Weather in Rome?")
        call = await recorder.wait_type(SessionEventType.EXTERNAL_TOOL_REQUESTED)
        assert call.data.tool_call_id is not None
        await session.handle_pending_tool_call(call.data.tool_call_id, "sunny")
        await recorder.wait_type(SessionEventType.ASSISTANT_TURN_END)
        # The session drops its tools: the next turn offers none, its history has a call.
        later = await client.resume_session(session.session_id, tools=[])
        answer = await later.send_and_wait("Thanks")
    assert answer is not None and answer.data.content == "Bye."
    last = server.requests[-1]
    assert [tool["name"] for tool in last.body["tools"]] == ["get_weather"]
    assert last.body["tool_choice"] == {"type": "none"}  # defined, not callable
    assert refused(server) == []
