"""Tool calls on the providers' wires: what a real daemon sends a strict model server
on each round of a turn that calls tools, in OpenAI's and in Anthropic's format.

The fake server refuses (HTTP 400, as the real APIs do) a request whose
history holds a tool call without its result or a result without its call,
so every round below being answered also shows the history was valid.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from copilot_client import SessionEventType, Tool, ToolInvocation
from tests.support.fake_model_server import Call, FakeModelServer, Request, calls, stream
from tests.support.model_providers import MODEL_OF, DaemonFactory, connect
from tests.support.session_events import Recorder

T = SessionEventType
APIS = ["openai", "anthropic"]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
# Long enough to be split in several fragments on the wire (ARGUMENT_PIECE).
PARIS = {"city": "Paris", "units": "celsius", "detail": "hourly"}
ROME = {"city": "Rome"}


def weather(invocation: ToolInvocation) -> str:
    return f"sunny in {invocation.arguments['city']}"


def clock(invocation: ToolInvocation) -> str:
    return "noon"


# skip_permission: the provider wire formats are under test, not permissions.
WEATHER = Tool(
    "get_weather", "The weather in a city", WEATHER_SCHEMA, weather, skip_permission=True
)
CLOCK = Tool("get_time", "The time of day", None, clock, skip_permission=True)


def history(request: Request) -> list[tuple[Any, ...]]:
    """The request's history, provider-neutral: ("user", text), ("assistant", text,
    [(call id, name, arguments)]), ("tool", call id, result text); system left out."""
    neutral: list[tuple[Any, ...]] = []
    for message in request.messages:
        role, content = message["role"], message.get("content")
        if request.api != "anthropic":
            if role == "assistant":
                asked = [
                    (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                    for c in message.get("tool_calls") or ()
                ]
                neutral.append(("assistant", content or "", asked))
            elif role == "tool":
                neutral.append(("tool", message["tool_call_id"], content))
            elif role == "user":
                neutral.append(("user", content))
            continue
        blocks: list[dict[str, Any]] = (
            content if isinstance(content, list) else [{"type": "text", "text": content}]
        )
        text = "".join(b["text"] for b in blocks if b["type"] == "text")
        if role == "assistant":
            asked = [(b["id"], b["name"], b["input"]) for b in blocks if b["type"] == "tool_use"]
            neutral.append(("assistant", text, asked))
            continue
        neutral.extend(
            ("tool", b["tool_use_id"], b["content"]) for b in blocks if b["type"] == "tool_result"
        )
        if text:
            neutral.append(("user", text))
    return neutral


def declared(request: Request) -> list[tuple[str, str, dict[str, Any]]]:
    """The tools a request offers the model: (name, description, parameters)."""
    tools = request.body.get("tools", [])
    if request.api == "anthropic":
        return [(t["name"], t["description"], t["input_schema"]) for t in tools]
    assert all(t["type"] == "function" for t in tools)
    return [
        (t["function"]["name"], t["function"]["description"], t["function"]["parameters"])
        for t in tools
    ]


def refused(server: FakeModelServer) -> list[Request]:
    return [r for r in server.requests if r.outcome == "refused"]


@pytest.mark.parametrize("api", APIS)
async def test_a_tool_called_and_answered_goes_back_to_the_model_with_its_call(
    start_daemon: DaemonFactory, server: FakeModelServer, api: str
) -> None:
    daemon = start_daemon()
    server.script(
        calls(Call("get_weather", PARIS), text=("Let me look.",)), stream("Sunny", " in Paris.")
    )
    async with connect(daemon) as client:
        session = await client.create_session(model=MODEL_OF[api], tools=[WEATHER])
        answer = await session.send_and_wait("Weather in Paris?")
        events = await session.get_events()
    assert answer is not None and answer.data.content == "Sunny in Paris."
    first, second = server.requests
    assert declared(first) == [("get_weather", "The weather in a city", WEATHER_SCHEMA)]
    assert history(first) == [("user", "Weather in Paris?")]
    asked = ("assistant", "Let me look.", [("call_get_weather_0", "get_weather", PARIS)])
    assert history(second) == [
        ("user", "Weather in Paris?"),
        asked,
        ("tool", "call_get_weather_0", "sunny in Paris"),
    ]
    [start] = [e for e in events if e.type is T.TOOL_EXECUTION_START]
    assert json.loads(start.proto.tool_execution_start.arguments_json) == PARIS


@pytest.mark.parametrize("api", APIS)
async def test_several_calls_in_one_message_are_each_answered_in_order(
    start_daemon: DaemonFactory, server: FakeModelServer, api: str
) -> None:
    daemon = start_daemon()
    server.script(
        calls(Call("get_weather", PARIS), Call("get_time"), Call("get_weather", ROME)),
        stream("Done."),
    )
    async with connect(daemon) as client:
        session = await client.create_session(model=MODEL_OF[api], tools=[WEATHER, CLOCK])
        answer = await session.send_and_wait("Paris, the time, Rome?")
        follow_up = await session.send_and_wait("Thanks")
    assert answer is not None and answer.data.content == "Done."
    assert follow_up is not None
    paris, time, rome = "call_get_weather_0", "call_get_time_1", "call_get_weather_2"
    ids = [paris, time, rome]
    asked = [(paris, "get_weather", PARIS), (time, "get_time", {}), (rome, "get_weather", ROME)]
    round_trip = [
        ("user", "Paris, the time, Rome?"),
        ("assistant", "", asked),
        ("tool", ids[0], "sunny in Paris"),
        ("tool", ids[1], "noon"),
        ("tool", ids[2], "sunny in Rome"),
    ]
    assert history(server.requests[1]) == round_trip
    # The next turn carries the whole round again, then the answer and the new message.
    assert history(server.requests[2]) == [
        *round_trip,
        ("assistant", "Done.", []),
        ("user", "Thanks"),
    ]
    assert refused(server) == []


async def test_calls_sent_whole_without_an_index_are_told_apart(
    start_daemon: DaemonFactory, server: FakeModelServer
) -> None:
    daemon = start_daemon()
    asked = calls(Call("get_weather", PARIS), Call("get_weather", ROME))
    server.script(replace(asked, whole_calls=True), stream("Both sunny."))
    async with connect(daemon) as client:
        session = await client.create_session(tools=[WEATHER])
        answer = await session.send_and_wait("Paris and Rome?")
    assert answer is not None and answer.data.content == "Both sunny."
    assert history(server.requests[1])[1:] == [
        (
            "assistant",
            "",
            [
                ("call_get_weather_0", "get_weather", PARIS),
                ("call_get_weather_1", "get_weather", ROME),
            ],
        ),
        ("tool", "call_get_weather_0", "sunny in Paris"),
        ("tool", "call_get_weather_1", "sunny in Rome"),
    ]


@pytest.mark.parametrize("api", APIS)
async def test_a_call_open_when_the_daemon_is_killed_goes_to_the_model_after_restart(
    start_daemon: DaemonFactory, server: FakeModelServer, api: str
) -> None:
    daemon = start_daemon()
    pending_only = Tool(
        "get_weather", "The weather in a city", WEATHER_SCHEMA, skip_permission=True
    )
    server.script(calls(Call("get_weather", ROME)))
    async with connect(daemon) as client:
        session = await client.create_session(
            session_id="kept", model=MODEL_OF[api], tools=[pending_only]
        )
        recorder = Recorder()
        session.on(recorder)
        await session.send("Weather in Rome?")
        await recorder.wait_type(T.EXTERNAL_TOOL_REQUESTED)
    daemon.restart_after_kill()
    server.script(stream("Sunny in Rome."), stream("You are welcome."))
    async with connect(daemon) as client:
        session = await client.resume_session("kept", continue_pending_work=True)
        [call] = await session.pending_tool_calls()
        assert await session.handle_pending_tool_call(call.tool_call_id, "sunny in Rome")
        answer = await session.send_and_wait("Thanks")
        events = await session.get_events()
    round_trip = [
        ("user", "Weather in Rome?"),
        ("assistant", "", [("call_get_weather_0", "get_weather", ROME)]),
        ("tool", "call_get_weather_0", "sunny in Rome"),
    ]
    first, after_restart, thanks = server.requests
    assert history(first) == round_trip[:1]
    assert history(after_restart) == round_trip
    assert history(thanks) == [*round_trip, ("assistant", "Sunny in Rome.", []), ("user", "Thanks")]
    assert answer is not None and answer.data.content == "You are welcome."
    assert [e.data.content for e in events if e.type is T.ASSISTANT_MESSAGE][-2:] == [
        "Sunny in Rome.",
        "You are welcome.",
    ]
    assert refused(server) == []


async def test_a_trimmed_history_never_starts_inside_a_tool_round(
    start_daemon: DaemonFactory, server: FakeModelServer
) -> None:
    """gpt-small leaves 300 tokens for the prompt: the second turn's request (~330
    estimated) is trimmed, and the cut that fits falls between the first turn's
    call (~125 tokens of arguments) and its result."""
    daemon = start_daemon()
    long_call = Call("get_weather", {"city": "Paris", "note": "n" * 330})
    question = " ".join(["word"] * 90)
    server.script(calls(long_call), stream("Noted."), stream("Fine."))
    async with connect(daemon) as client:
        session = await client.create_session(model="gpt-small", tools=[WEATHER])
        await session.send_and_wait("Weather?")
        answer = await session.send_and_wait(question)
        events = await session.get_events()
    assert answer is not None and answer.data.content == "Fine."
    [truncation] = [e for e in events if e.type is T.SESSION_TRUNCATION]
    assert truncation.proto.session_truncation.messages_removed == 4
    assert history(server.requests[-1]) == [("user", question)]
    assert refused(server) == []


@pytest.mark.parametrize("api", APIS)
async def test_after_an_abort_the_closed_call_and_the_next_message_make_a_valid_history(
    start_daemon: DaemonFactory, server: FakeModelServer, api: str
) -> None:
    """The synthetic result and the next user message follow each other: in Anthropic's
    format they share one user message, the result first."""
    daemon = start_daemon()
    server.script(calls(Call("get_weather", ROME)), stream("Ask me again."))
    async with connect(daemon) as client:
        session = await client.create_session(
            model=MODEL_OF[api],
            tools=[Tool("get_weather", "The weather", WEATHER_SCHEMA, skip_permission=True)],
        )
        recorder = Recorder()
        session.on(recorder)
        await session.send("Weather in Rome?")
        await recorder.wait_type(T.EXTERNAL_TOOL_REQUESTED)
        assert await session.abort("changed my mind")
        answer = await session.send_and_wait("Never mind")
    assert answer is not None and answer.data.content == "Ask me again."
    user, asked, (role, call_id, result), last = history(server.requests[-1])
    assert (user, asked, last) == (
        ("user", "Weather in Rome?"),
        ("assistant", "", [("call_get_weather_0", "get_weather", ROME)]),
        ("user", "Never mind"),
    )
    assert (role, call_id) == ("tool", "call_get_weather_0")
    assert result.startswith("interrupted: no client answered") and "changed my mind" in result
    if api == "anthropic":
        assert [b["type"] for b in server.requests[-1].messages[-1]["content"]] == [
            "tool_result",
            "text",
        ]
    assert refused(server) == []
