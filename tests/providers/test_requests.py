"""Real models: what a real daemon sends a real HTTP server that speaks the providers'
formats, and the models it offers.

Every test starts ``copilotd serve`` with a config file whose providers
point at ``FakeModelServer`` (127.0.0.1, an ephemeral port): OpenAI Chat
Completions and Azure OpenAI (server-sent ``chat.completion.chunk`` events)
and Anthropic Messages (``message_start`` … ``message_stop``). The server
records every request it receives and is scripted per test: slow streams,
429/503 with ``Retry-After``, 401, repeated 5xx, dropped connections, hangs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from copilot_client import (
    CopilotClient,
    FailedPreconditionError,
    InvalidArgumentError,
)
from copilotd.sessions.token_budget import estimate_tokens, message_tokens
from copilotd.sessions.turns import BUILTIN_SYSTEM_MESSAGE
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import FakeModelServer, stream
from tests.support.model_providers import (
    ANTHROPIC_KEY,
    AZURE_KEY,
    COMPLETED_TURN,
    MODEL_OF,
    OPENAI_KEY,
    SMALL_OUTPUT,
    SMALL_WINDOW,
    DaemonFactory,
    T,
    as_chat,
    connect,
    conversation,
)
from tests.support.session_events import Recorder, types

# -- what the daemon sends ---------------------------------------------------------


@pytest.mark.parametrize("api", ["openai", "anthropic", "azure"])
async def test_requests_carry_system_message_and_history_across_a_restart(
    daemon: DaemonProcess, server: FakeModelServer, api: str
) -> None:
    model = MODEL_OF[api]
    async with connect(daemon) as client:
        session = await client.create_session(
            session_id="history", model=model, system_message="Answer in French."
        )
        server.script(stream("Bonjour", " !"), stream("Deux"))
        first = await session.send_and_wait("Hello")
        assert first is not None and first.data.content == "Bonjour !"
        await session.send_and_wait("One more")

    daemon.restart_after_kill()
    async with connect(daemon) as client:
        session = await client.resume_session("history")
        server.script(stream("Trois"))
        third = await session.send_and_wait("And now?")
        assert third is not None and third.data.content == "Trois"

    system = f"{BUILTIN_SYSTEM_MESSAGE}\n\nAnswer in French."
    full = [
        ("system", system),
        ("user", "Hello"),
        ("assistant", "Bonjour !"),
        ("user", "One more"),
        ("assistant", "Deux"),
        ("user", "And now?"),
    ]
    requests = server.requests
    assert [conversation(r) for r in requests] == [full[:2], full[:4], full]
    last = requests[-1]
    assert last.body["stream"] is True
    if api == "openai":
        assert last.path == "/v1/chat/completions"
        assert last.body["model"] == "gpt-test"
        assert last.headers["authorization"] == f"Bearer {OPENAI_KEY}"
        assert last.body["stream_options"] == {"include_usage": True}
        assert last.headers["x-team"] == "copilotd-tests"  # the configured extra header
    elif api == "azure":
        assert last.path == "/openai/deployments/my-deployment/chat/completions"
        assert last.query["api-version"] == "2024-10-21"
        assert last.headers["api-key"] == AZURE_KEY
    else:
        assert last.path == "/v1/messages"
        assert last.body["model"] == "claude-test"
        assert last.body["max_tokens"] == 1000
        assert ANTHROPIC_KEY in (last.headers.get("x-api-key", "") + last.headers["authorization"])


async def test_replaced_system_message_is_sent_alone(
    client: CopilotClient, server: FakeModelServer
) -> None:
    session = await client.create_session(
        model="claude-test", system_message={"content": "You are terse.", "mode": "replace"}
    )
    await session.send_and_wait("Hi")
    assert conversation(server.requests[0]) == [("system", "You are terse."), ("user", "Hi")]


async def test_deltas_reach_a_second_client_in_order_and_usage_is_summed(
    daemon: DaemonProcess, server: FakeModelServer
) -> None:
    chunks = [f"piece{i} " for i in range(12)]
    async with connect(daemon) as first, connect(daemon) as second:
        mine = await first.create_session(session_id="live", model="gpt-test")
        theirs = await second.resume_session("live")
        watched = Recorder()
        theirs.on(watched)
        server.script(stream("Warm", " up", usage=(20, 2)))
        await theirs.send_and_wait("Warm up")  # the second client's stream is live now

        server.script(stream(*chunks, delay=0.01, usage=(123, 45)))
        answer = await mine.send_and_wait("Stream to both of us")
        assert answer is not None
        end = await watched.wait_type(T.ASSISTANT_TURN_END, count=2)
        assert end.data.user_message_id == answer.data.user_message_id

        deltas = [
            e.data.delta_content
            for e in watched.events
            if e.type is T.ASSISTANT_MESSAGE_DELTA
            and e.data.user_message_id == answer.data.user_message_id
        ]
        assert deltas == chunks  # every piece, in order, as the provider streamed them
        history = await theirs.get_messages()
        stored = [e for e in history if e.type is T.ASSISTANT_MESSAGE]
        assert stored[-1] == answer
        assert answer.data.content == "".join(chunks) and answer.data.partial is False

        usage = [e for e in history if e.type is T.ASSISTANT_USAGE]
        assert [(u.data.input_tokens, u.data.output_tokens) for u in usage] == [(20, 2), (123, 45)]
        assert usage[-1].data.model == "gpt-test"
        assert usage[-1].data.estimated is False
        assert usage[-1].data.provider_call_id == "chatcmpl-fake"
        assert usage[-1].data.user_message_id == answer.data.user_message_id
        assert types(history[-5:]) == COMPLETED_TURN

        listed = await first.list_sessions()
        assert (listed[0].input_tokens, listed[0].output_tokens) == (143, 47)


async def test_usage_is_estimated_when_the_provider_reports_none(
    client: CopilotClient, server: FakeModelServer
) -> None:
    # Like a server that ignores stream_options (stream_usage = false here).
    session = await client.create_session(model="gpt-quick")
    answer = await session.send_and_wait("How many tokens?")
    assert answer is not None and answer.data.content == server.default_text
    request = server.requests[0]
    assert "stream_options" not in request.body
    assert request.body["model"] == "gpt-test"  # the wire model
    usage = next(e for e in await session.get_messages() if e.type is T.ASSISTANT_USAGE)
    assert usage.data.estimated is True
    assert usage.data.input_tokens == sum(message_tokens(m) for m in as_chat(request))
    assert usage.data.output_tokens == estimate_tokens(server.default_text)


# -- models ----------------------------------------------------------------------


async def test_list_models_and_set_model(client: CopilotClient, server: FakeModelServer) -> None:
    models = await client.list_models()
    assert [m.id for m in models] == [
        "gpt-test",
        "gpt-small",
        "gpt-quick",
        "claude-test",
        "azure-test",
        "gpt-unkeyed",
    ]
    by_id = {m.id: m for m in models}
    assert by_id["gpt-test"].is_default and not by_id["claude-test"].is_default
    assert (by_id["gpt-small"].context_window, by_id["gpt-small"].max_output_tokens) == (
        SMALL_WINDOW,
        SMALL_OUTPUT,
    )
    assert (by_id["claude-test"].provider, by_id["claude-test"].provider_type) == (
        "anthropic",
        "anthropic",
    )
    assert by_id["azure-test"].provider_type == "azure"

    session = await client.create_session(session_id="switch")
    assert session.metadata.model == "gpt-test"  # the configured default
    await session.send_and_wait("To OpenAI")
    await session.set_model("claude-test")
    assert session.metadata.model == "claude-test"
    answer = await session.send_and_wait("To Anthropic")
    assert answer is not None and answer.data.model == "claude-test"
    assert [r.api for r in server.requests] == ["openai", "anthropic"]
    # The new model got the whole conversation.
    assert conversation(server.requests[1])[1:] == [
        ("user", "To OpenAI"),
        ("assistant", server.default_text),
        ("user", "To Anthropic"),
    ]

    history = await session.get_messages()
    change = next(e for e in history if e.type is T.SESSION_MODEL_CHANGE)
    assert (change.data.previous_model, change.data.new_model) == ("gpt-test", "claude-test")
    usage = [e.data.model for e in history if e.type is T.ASSISTANT_USAGE]
    assert usage == ["gpt-test", "claude-test"]
    metadata = await client.get_session_metadata("switch")
    assert metadata is not None and metadata.model == "claude-test"

    with pytest.raises(InvalidArgumentError) as unknown:
        await session.set_model("gpt-nonexistent")
    assert unknown.value.reason == "ERROR_REASON_UNKNOWN_MODEL"
    assert "'gpt-nonexistent'" in unknown.value.message
    assert "gpt-test, gpt-small" in unknown.value.message and "list_models" in unknown.value.message
    with pytest.raises(InvalidArgumentError) as refused:
        await client.create_session(model="gpt-nonexistent")
    assert refused.value.reason == "ERROR_REASON_UNKNOWN_MODEL"
    await session.set_model("claude-test")  # unchanged: nothing recorded
    assert [e.type for e in await session.get_messages()].count(T.SESSION_MODEL_CHANGE) == 1


async def test_offline_model_when_nothing_is_configured(short_tmp: Path) -> None:
    daemon = DaemonProcess(short_tmp).start()
    try:
        async with connect(daemon) as client:
            models = await client.list_models()
            assert [(m.id, m.provider_type, m.is_default) for m in models] == [
                ("offline", "offline", True)
            ]
            session = await client.create_session(model="any-name-at-all")
            answer = await session.send_and_wait("Hi")
            assert answer is not None and "offline model" in (answer.data.content or "")
            # The offline model costs no tokens: no assistant.usage.
            assert T.ASSISTANT_USAGE not in types(await session.get_messages())
    finally:
        daemon.kill()


async def test_a_model_no_longer_offered_is_refused_until_switched(
    short_tmp: Path, start_daemon: DaemonFactory, server: FakeModelServer
) -> None:
    offline = DaemonProcess(short_tmp).start()  # same data dir, no config
    async with connect(offline) as client:
        await client.create_session(session_id="old", model="gpt-5")
    offline.kill()
    daemon = start_daemon()
    async with connect(daemon) as client:
        session = await client.resume_session("old")
        with pytest.raises(FailedPreconditionError) as refused:
            await session.send("Hello?")
        assert refused.value.reason == "ERROR_REASON_MODEL_UNAVAILABLE"
        assert "'gpt-5'" in refused.value.message and "set_model" in refused.value.message
        await session.set_model("gpt-test")
        answer = await session.send_and_wait("Hello again")
        assert answer is not None and answer.data.content == server.default_text
    # The refused send wrote nothing: the provider got only the second message.
    assert conversation(server.requests[0])[1:] == [("user", "Hello again")]
