"""Real models: a real daemon talks to a real HTTP server that speaks the providers' formats.

Every test starts ``copilotd serve`` with a config file whose providers
point at ``FakeModelServer`` (127.0.0.1, an ephemeral port): OpenAI Chat
Completions and Azure OpenAI (server-sent ``chat.completion.chunk`` events)
and Anthropic Messages (``message_start`` … ``message_stop``). The server
records every request it receives and is scripted per test: slow streams,
429/503 with ``Retry-After``, 401, repeated 5xx, dropped connections, hangs.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from copilot_client import (
    CopilotClient,
    FailedPreconditionError,
    InvalidArgumentError,
    ProviderConfig,
    ProviderSecretRequiredError,
    SessionEvent,
    SessionEventType,
    SessionFailedError,
)
from copilotd.providers.base import ChatMessage, Role
from copilotd.sessions.token_budget import estimate_tokens, message_tokens
from copilotd.sessions.turns import BUILTIN_SYSTEM_MESSAGE
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import FakeModelServer, Reply, Request, error, stream
from tests.support.session_events import Recorder

T = SessionEventType
KEY_ENV = "COPILOTD_TEST_OPENAI_KEY"
OPENAI_KEY = "sk-test-openai-4f1c9a7e2b"
ANTHROPIC_KEY = "sk-ant-test-8d2e6b0c4a"
AZURE_KEY = "azure-test-key-5b7d1f3e9c"
SESSION_KEY = "sk-session-own-key-7e3a1c5d"
SESSION_TOKEN = "session-bearer-token-2c8f4a6b"
# Backoff alone waits at most this long in these tests; a longer gap between
# two attempts can only come from honouring Retry-After.
MAX_BACKOFF = 0.05
RETRIES = 3
SMALL_WINDOW, SMALL_OUTPUT = 400, 100
COMPLETED_TURN = [
    T.USER_MESSAGE,
    T.ASSISTANT_TURN_START,
    T.ASSISTANT_MESSAGE,
    T.ASSISTANT_USAGE,
    T.ASSISTANT_TURN_END,
]
FAILED_TURN = [T.USER_MESSAGE, T.ASSISTANT_TURN_START, T.SESSION_ERROR, T.ASSISTANT_TURN_END]
# The model of each API in the config below.
MODEL_OF = {"openai": "gpt-test", "anthropic": "claude-test", "azure": "azure-test"}


def config_text(server: FakeModelServer, models_extra: str = "") -> str:
    retry = f"max_retries = {RETRIES}\nretry_initial_delay = 0.01\nretry_max_delay = {MAX_BACKOFF}"
    return f"""
[models]
default = "gpt-test"
{models_extra}

[providers.openai]
type = "openai"
base_url = "{server.url}/v1"
api_key_env = "{KEY_ENV}"
headers = {{ "X-Team" = "copilotd-tests" }}
{retry}
[providers.openai.models]
"gpt-test" = {{}}
"gpt-small" = {{ context_window = {SMALL_WINDOW}, max_output_tokens = {SMALL_OUTPUT} }}

[providers.quick]
type = "openai"
base_url = "{server.url}/v1"
api_key_env = "{KEY_ENV}"
timeout = 1
stream_usage = false
{retry}
models = {{ "gpt-quick" = {{ wire_model = "gpt-test" }} }}

[providers.anthropic]
type = "anthropic"
base_url = "{server.url}"
api_key = "{ANTHROPIC_KEY}"
max_output_tokens = 1000
{retry}
models = ["claude-test"]

[providers.azure]
type = "azure"
base_url = "{server.url}"
api_version = "2024-10-21"
api_key = "{AZURE_KEY}"
{retry}
models = {{ "azure-test" = {{ wire_model = "my-deployment" }} }}

[providers.unkeyed]
type = "openai"
base_url = "{server.url}/v1"
api_key_env = "COPILOTD_TEST_UNSET_VARIABLE"
models = ["gpt-unkeyed"]
"""


# -- fixtures and helpers ------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as running:
        yield running


DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def start_daemon(
    short_tmp: Path, server: FakeModelServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DaemonFactory]:
    """Starts copilotd with the config above (``models_extra`` goes into ``[models]``)."""
    monkeypatch.setenv(KEY_ENV, OPENAI_KEY)
    monkeypatch.delenv("COPILOTD_TEST_UNSET_VARIABLE", raising=False)
    started: list[DaemonProcess] = []

    def start(models_extra: str = "", args: tuple[str, ...] = ()) -> DaemonProcess:
        path = short_tmp / "config.toml"
        path.write_text(config_text(server, models_extra))
        daemon = DaemonProcess(short_tmp, ["--config", str(path), *args]).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def daemon(start_daemon: DaemonFactory) -> DaemonProcess:
    return start_daemon()


def connect(daemon: DaemonProcess) -> CopilotClient:
    return CopilotClient(socket_path=daemon.socket_path, auto_start=False)


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[CopilotClient]:
    async with connect(daemon) as connected:
        yield connected


def types(events: list[SessionEvent]) -> list[SessionEventType]:
    return [e.type for e in events]


def conversation(request: Request) -> list[tuple[str, str]]:
    """The messages a request carried, as (role, content), the system message first."""
    sent = [(m["role"], m["content"]) for m in request.messages]
    if request.api == "anthropic" and "system" in request.body:
        sent.insert(0, ("system", request.body["system"]))
    return sent


def as_chat(request: Request) -> list[ChatMessage]:
    return [ChatMessage(cast(Role, role), content) for role, content in conversation(request)]


def streamed_text(events: list[SessionEvent], user_message_id: str | None) -> str:
    return "".join(
        e.data.delta_content or ""
        for e in events
        if e.type is T.ASSISTANT_MESSAGE_DELTA and e.data.user_message_id == user_message_id
    )


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


# -- failures --------------------------------------------------------------------


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_429_and_503_with_retry_after_are_retried_then_succeed(
    client: CopilotClient, server: FakeModelServer, api: str
) -> None:
    session = await client.create_session(model=MODEL_OF[api])
    server.script(
        error(429, "Rate limit reached; slow down", retry_after="1"),
        error(503, "The server is overloaded", retry_after="1"),
        stream("Finally", " here"),
    )
    answer = await session.send_and_wait("Please answer")
    assert answer is not None and answer.data.content == "Finally here"

    requests = server.requests
    assert [r.outcome for r in requests] == ["error", "error", "completed"]
    assert conversation(requests[0]) == conversation(requests[2])  # the same request again
    gaps = []
    for failed, retry in itertools.pairwise(requests):
        assert failed.ended_at is not None
        gaps.append(retry.received_at - failed.ended_at)
    assert min(gaps) >= 1.0 > MAX_BACKOFF  # Retry-After: 1 honoured
    print(f"\n[{api}] waits before the retries: {', '.join(f'{g:.3f} s' for g in gaps)}")
    history = await session.get_messages()
    assert types(history[1:]) == COMPLETED_TURN  # no session.error

    # A provider that asks for a longer wait than max_retry_after gets no retry.
    server.script(error(429, "Quota exhausted", retry_after="120"))
    with pytest.raises(SessionFailedError) as refused:
        await session.send_and_wait("Once more")
    event = refused.value.event
    assert (event.data.error_type, event.data.status_code, event.data.attempts) == (
        "rate_limit",
        429,
        1,
    )
    assert "asked to wait 120 s before retrying, more than max_retry_after = 60 s" in (
        event.data.message or ""
    )
    assert len(server.requests) == 4


@pytest.mark.parametrize(("api", "status"), [("openai", 401), ("anthropic", 403)])
async def test_authentication_failure_is_not_retried(
    client: CopilotClient, server: FakeModelServer, api: str, status: int
) -> None:
    session = await client.create_session(model=MODEL_OF[api])
    server.script(error(status, f"Incorrect API key provided: {OPENAI_KEY}"))
    with pytest.raises(SessionFailedError) as failed:
        await session.send_and_wait("Hello?")
    event = failed.value.event
    assert event.data.error_type == "authentication"
    assert event.data.status_code == status and event.data.attempts == 1
    assert "Incorrect API key provided: [redacted]" in (event.data.message or "")
    assert OPENAI_KEY not in str(failed.value)
    assert len(server.requests) == 1  # not retried

    history = await session.get_messages()
    assert types(history[1:]) == FAILED_TURN
    assert history[1].data.content == "Hello?"  # the user's words are kept
    answer = await session.send_and_wait("Again")  # the session keeps working
    assert answer is not None and answer.data.content == server.default_text


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_repeated_5xx_ends_in_session_error_and_the_next_turn_works(
    client: CopilotClient, server: FakeModelServer, api: str
) -> None:
    session = await client.create_session(model=MODEL_OF[api])
    server.script(*[error(500, "upstream exploded")] * (RETRIES + 1))
    with pytest.raises(SessionFailedError) as failed:
        await session.send_and_wait("First")
    event = failed.value.event
    assert (event.data.error_type, event.data.status_code) == ("provider", 500)
    assert event.data.attempts == RETRIES + 1 == len(server.requests)
    assert "500 Internal Server Error: upstream exploded" in (event.data.message or "")
    assert f"gave up after {RETRIES + 1} attempts" in (event.data.message or "")

    history = await session.get_messages()
    assert types(history[1:]) == FAILED_TURN
    assert history[1].data.content == "First"
    assert history[-1].data.reason == "error"

    answer = await session.send_and_wait("Second")
    assert answer is not None and answer.data.content == server.default_text
    sent = conversation(server.requests[-1])[1:]
    if api == "anthropic":  # the Messages API wants alternating turns: joined
        assert sent == [("user", "First\n\nSecond")]
    else:
        assert sent == [("user", "First"), ("user", "Second")]


async def test_dropped_connection_and_timeout_before_any_text_are_retried(
    client: CopilotClient, server: FakeModelServer
) -> None:
    session = await client.create_session(model="gpt-quick")  # 1 s timeout
    server.script(Reply(drop=True), Reply(hang=True), stream("Made", " it"))
    answer = await session.send_and_wait("Are you there?")
    assert answer is not None and answer.data.content == "Made it"
    requests = await server.wait_for_async(lambda rs: rs[1].outcome != "running")
    assert [r.outcome for r in requests] == ["dropped", "disconnected", "completed"]
    assert types((await session.get_messages())[1:]) == COMPLETED_TURN


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_mid_stream_failure_keeps_the_partial_text(
    client: CopilotClient, server: FakeModelServer, api: str
) -> None:
    session = await client.create_session(model=MODEL_OF[api])
    watched = Recorder()
    session.on(watched)
    server.script(Reply(chunks=("Partial ", "answer ", "never ", "finished"), drop_after_chunks=2))
    with pytest.raises(SessionFailedError) as failed:
        await session.send_and_wait("Tell me")
    assert failed.value.event.data.error_type == "connection"
    assert len(server.requests) == 1  # text was streamed: not retried
    history = await session.get_messages()
    assert types(history[1:]) == [
        T.USER_MESSAGE,
        T.ASSISTANT_TURN_START,
        T.ASSISTANT_MESSAGE,
        T.SESSION_ERROR,
        T.ASSISTANT_TURN_END,
    ]
    partial = history[3]
    assert partial.data.partial is True
    assert partial.data.content == "Partial answer "
    assert streamed_text(watched.events, partial.data.user_message_id) == "Partial answer "
    answer = await session.send_and_wait("Go on")
    assert answer is not None and answer.data.partial is False
    assert ("assistant", "Partial answer ") in conversation(server.requests[-1])


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_abort_cuts_a_slow_stream_and_keeps_the_partial_text(
    client: CopilotClient, server: FakeModelServer, api: str
) -> None:
    session = await client.create_session(model=MODEL_OF[api])
    watched = Recorder()
    session.on(watched)
    pieces = [f"w{i} " for i in range(400)]
    server.script(stream(*pieces, delay=0.05))  # 20 s if not cut
    waiting = asyncio.create_task(session.send_and_wait("Write a long essay"))
    await watched.wait_type(T.ASSISTANT_MESSAGE_DELTA, count=3)

    asked = time.monotonic()
    assert await session.abort("user pressed stop") is True
    answer = await waiting
    ended = time.monotonic() - asked
    requests = await server.wait_for_async(lambda rs: rs[0].outcome != "running")
    request = requests[0]
    assert request.outcome == "disconnected"
    assert request.chunks_sent < len(pieces)  # the HTTP stream was cut, not drained
    assert request.ended_at is not None
    print(
        f"\n[{api}] abort: turn ended {ended * 1000:.0f} ms and the server saw the "
        f"connection closed {(request.ended_at - asked) * 1000:.0f} ms after abort(); "
        f"{request.chunks_sent} of {len(pieces)} chunks sent"
    )

    assert answer is not None and answer.data.partial is True
    assert answer.data.content == streamed_text(watched.events, answer.data.user_message_id)
    assert answer.data.content and pieces[0] + pieces[1] + pieces[2] in answer.data.content
    history = await session.get_messages()
    assert types(history[1:]) == [
        T.USER_MESSAGE,
        T.ASSISTANT_TURN_START,
        T.ABORT,
        T.ASSISTANT_MESSAGE,
        T.ASSISTANT_TURN_END,
    ]
    assert history[-1].data.reason == "aborted"
    again = await session.send_and_wait("Shorter, please")
    assert again is not None and again.data.content == server.default_text


async def test_missing_key_variable_fails_the_turn_with_a_clear_error(
    client: CopilotClient, server: FakeModelServer
) -> None:
    session = await client.create_session(model="gpt-unkeyed")
    with pytest.raises(SessionFailedError) as failed:
        await session.send_and_wait("Hi")
    event = failed.value.event
    assert event.data.error_type == "configuration"
    assert "COPILOTD_TEST_UNSET_VARIABLE" in (event.data.message or "")
    assert "is not set" in (event.data.message or "")
    assert server.requests == []


# -- context budget --------------------------------------------------------------


async def test_long_session_is_trimmed_to_the_budget(
    client: CopilotClient, server: FakeModelServer
) -> None:
    budget = SMALL_WINDOW - SMALL_OUTPUT
    session = await client.create_session(model="gpt-small")
    prompts = [f"Question {i}: " + "tell me more about it " * 6 for i in range(8)]
    for i, prompt in enumerate(prompts):
        server.script(stream(f"Answer {i}"))
        await session.send_and_wait(prompt)

    full: list[tuple[str, str]] = []
    history = await session.get_messages()
    truncations = [e for e in history if e.type is T.SESSION_TRUNCATION]
    assert truncations, "the session outgrew the budget but nothing was trimmed"
    messages = [e for e in history if e.type in (T.USER_MESSAGE, T.ASSISTANT_MESSAGE)]
    for i, request in enumerate(server.requests):
        full += [("user", prompts[i])]
        sent = conversation(request)
        system, kept = sent[0], sent[1:]
        assert system == ("system", BUILTIN_SYSTEM_MESSAGE)
        assert kept[-1] == ("user", prompts[i])  # the newest user message stays
        assert kept == full[len(full) - len(kept) :]  # the oldest were left out
        assert kept[0][0] == "user"
        assert sum(message_tokens(m) for m in as_chat(request)) <= budget
        assert request.body["max_completion_tokens"] == SMALL_OUTPUT
        full += [("assistant", f"Answer {i}")]

    # Each trimmed turn recorded what it left out, right after its turn_start.
    trimmed = [
        (turn, len(conversation(request)) - 1)
        for turn, request in enumerate(server.requests)
        if len(conversation(request)) - 1 < 2 * turn + 1  # fewer than the whole history
    ]
    assert len(truncations) == len(trimmed)
    for event, (turn, sent_count) in zip(truncations, trimmed, strict=True):
        whole = 2 * turn + 1  # earlier questions and answers, and the new question
        assert event.data.messages_removed == whole - sent_count
        assert event.data.pre_truncation_messages == whole + 1  # and the system message
        assert event.data.post_truncation_messages == sent_count + 1
        assert event.data.token_limit == budget
        post = event.data.post_truncation_tokens or 0
        assert post <= budget < (event.data.pre_truncation_tokens or 0)
        assert event.data.tokens_removed == (event.data.pre_truncation_tokens or 0) - post
        first_kept = messages[whole - sent_count]
        assert event.data.first_kept_sequence == first_kept.sequence
        turn_start = next(
            e
            for e in history
            if e.type is T.ASSISTANT_TURN_START and e.data.turn_id == event.data.turn_id
        )
        assert turn_start.data.user_message_id == messages[2 * turn].id
        assert event.sequence == turn_start.sequence + 1


# -- a session's own provider, and secrets ----------------------------------------


def assert_nowhere(secrets: list[str], daemon: DaemonProcess) -> None:
    """No secret in any file of the data directory (LMDB's data.mdb included) or in the log."""
    files = [path for path in daemon.data_dir.rglob("*") if path.is_file()]
    assert any(path.name == "data.mdb" for path in files)
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret} found in {path}"
    log = "".join(daemon.output)
    for secret in secrets:
        assert secret not in log, f"{secret} found in the daemon's log"


async def test_own_provider_secrets_never_reach_the_store_or_the_log(
    start_daemon: DaemonFactory, server: FakeModelServer
) -> None:
    daemon = start_daemon(args=("--log-level", "DEBUG"))
    own_key = ProviderConfig(
        type="openai", base_url=f"{server.url}/v1", api_key=SESSION_KEY, wire_model="their-model"
    )
    own_token = {
        "type": "anthropic",
        "base_url": server.url,
        "bearer_token": SESSION_TOKEN,
        "max_output_tokens": 500,
    }
    assert SESSION_KEY not in repr(own_key)
    secrets = [SESSION_KEY, SESSION_TOKEN, OPENAI_KEY, ANTHROPIC_KEY]
    async with connect(daemon) as client:
        keyed = await client.create_session(session_id="own-key", model="mine", provider=own_key)
        assert keyed.metadata.provider == ProviderConfig(
            type="openai",
            base_url=f"{server.url}/v1",
            wire_model="their-model",
            credential="api_key",
        )
        await keyed.send_and_wait("Hello over my own key")
        # A retried failure is logged with the provider's words: the log hides the key.
        server.script(error(500, f"Internal error for key {SESSION_KEY}"), stream("Retried"))
        retried = await keyed.send_and_wait("Try again")
        assert retried is not None and retried.data.content == "Retried"
        tokened = await client.create_session(
            session_id="own-token", model="claude-mine", provider=own_token
        )
        await tokened.send_and_wait("Hello over my own token")
        # Provider messages that quote a secret are stored and logged without it.
        server.script(error(401, f"Incorrect API key provided: {SESSION_KEY}"))
        with pytest.raises(SessionFailedError) as failed:
            await keyed.send_and_wait("Once more")
        assert "provided: [redacted]" in (failed.value.event.data.message or "")
        configured = await client.create_session(session_id="configured", model="gpt-test")
        server.script(error(403, f"Keys {OPENAI_KEY} and {ANTHROPIC_KEY} are not allowed"))
        with pytest.raises(SessionFailedError):
            await configured.send_and_wait("Configured")
        listed = {s.session_id: s for s in await client.list_sessions()}
        assert listed["own-token"].provider == ProviderConfig(
            type="anthropic", base_url=server.url, max_output_tokens=500, credential="bearer_token"
        )

    # The secrets were really used...
    requests = server.requests
    assert requests[0].headers["authorization"] == f"Bearer {SESSION_KEY}"
    assert requests[0].body["model"] == "their-model"
    assert requests[3].headers["authorization"] == f"Bearer {SESSION_TOKEN}"
    assert requests[3].body["max_tokens"] == 500
    # ...and are nowhere on disk or in the (debug-level) log after a clean stop.
    assert daemon.terminate() == 0
    assert any("DEBUG" in line for line in daemon.output)
    assert any("Internal error for key [redacted]; retry 1 of 3" in line for line in daemon.output)
    assert_nowhere(secrets, daemon)

    daemon.start()
    async with connect(daemon) as client:
        keyed = await client.resume_session("own-key")
        before = await keyed.get_messages()
        with pytest.raises(ProviderSecretRequiredError) as missing:
            await keyed.send("Are you still there?")
        error_ = missing.value
        assert error_.status is grpc.StatusCode.FAILED_PRECONDITION
        assert error_.reason == "ERROR_REASON_PROVIDER_SECRET_REQUIRED"
        assert "client.resume_session('own-key', provider=" in error_.message
        assert "'api_key': ..." in error_.message and f"{server.url}/v1" in error_.message
        assert await keyed.get_messages() == before  # refused before anything was written

        tokened = await client.resume_session("own-token")
        with pytest.raises(ProviderSecretRequiredError) as missing:
            await tokened.send_and_wait("And you?")
        assert "'bearer_token': ..." in missing.value.message

        keyed = await client.resume_session("own-key", provider=own_key)
        answer = await keyed.send_and_wait("Back with my key")
        assert answer is not None and answer.data.content == server.default_text
        last = server.requests[-1]
        assert last.headers["authorization"] == f"Bearer {SESSION_KEY}"
        assert conversation(last)[1:3] == [
            ("user", "Hello over my own key"),
            ("assistant", server.default_text),
        ]
    assert daemon.terminate() == 0
    assert_nowhere(secrets, daemon)


async def test_configured_provider_answers_when_the_config_allows_it(
    start_daemon: DaemonFactory, server: FakeModelServer
) -> None:
    daemon = start_daemon('session_secret_missing = "use_configured"')
    own = ProviderConfig(type="anthropic", base_url=server.url, api_key=SESSION_KEY)
    async with connect(daemon) as client:
        session = await client.create_session(session_id="byok", model="gpt-test", provider=own)
        await session.send_and_wait("Through my own key")
    daemon.restart_after_kill()
    async with connect(daemon) as client:
        session = await client.resume_session("byok")
        answer = await session.send_and_wait("Through the configured provider")
        assert answer is not None
    mine, configured = server.requests
    assert mine.api == "anthropic" and SESSION_KEY in mine.headers["authorization"]
    assert configured.api == "openai" and configured.headers["authorization"] == (
        f"Bearer {OPENAI_KEY}"
    )


AMBIENT = {
    name: f"ambient-{name.lower()}-value"
    for name in (
        "OPENAI_API_KEY",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_AD_TOKEN",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
    )
}


async def test_own_provider_without_a_secret_needs_nothing_after_a_restart(
    start_daemon: DaemonFactory, server: FakeModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keys in the daemon's environment must never go to a session's own server.
    for name, value in AMBIENT.items():
        monkeypatch.setenv(name, value)
    daemon = start_daemon()
    local = {"type": "openai", "base_url": f"{server.url}/v1", "max_prompt_tokens": 4000}
    async with connect(daemon) as client:
        session = await client.create_session(session_id="local", model="llama3", provider=local)
        await session.set_model("qwen2")  # a session's own provider serves any name
        await session.send_and_wait("Hi")
        other = await client.create_session(
            model="claude-x", provider={"type": "anthropic", "base_url": server.url}
        )
        await other.send_and_wait("Hi")
    daemon.restart_after_kill()
    async with connect(daemon) as client:
        session = await client.resume_session("local")
        await session.send_and_wait("Still there?")
    requests = server.requests
    assert [r.body["model"] for r in requests] == ["qwen2", "claude-x", "qwen2"]
    assert all(r.headers["authorization"] == "Bearer no-key" for r in requests)
    for request in requests:
        sent = repr(request.headers) + repr(request.body)
        assert not any(value in sent for value in AMBIENT.values())


# What the SDKs add to requests from the environment (explicit constructor
# arguments cannot turn these off): the daemon owner's, never a session's.
DAEMON_HEADERS = {
    "OPENAI_CUSTOM_HEADERS": (
        "X-Daemon-Secret: daemon-openai-header\n"
        "Authorization: Bearer daemon-openai-token\n"
        "api-key: daemon-azure-key"
    ),
    "ANTHROPIC_CUSTOM_HEADERS": (
        "X-Daemon-Secret: daemon-anthropic-header\n"
        "Authorization: Bearer daemon-anthropic-token\n"
        "x-api-key: daemon-anthropic-key"
    ),
    "OPENAI_ORG_ID": "daemon-org",
    "OPENAI_PROJECT_ID": "daemon-project",
    "OPENAI_ADMIN_KEY": "daemon-admin-key",
}


def own_providers(server: FakeModelServer) -> dict[str, dict[str, str]]:
    """Session providers of every type and credential, by the model name they serve."""
    azure = {"type": "azure", "base_url": server.url, "api_version": "2024-10-21"}
    anthropic = {"type": "anthropic", "base_url": server.url}
    return {
        "openai-key": {"type": "openai", "base_url": f"{server.url}/v1", "api_key": SESSION_KEY},
        "openai-none": {"type": "openai", "base_url": f"{server.url}/v1"},
        "azure-key": {**azure, "api_key": SESSION_KEY},
        "azure-token": {**azure, "bearer_token": SESSION_TOKEN},
        "anthropic-key": {**anthropic, "api_key": SESSION_KEY},
        "anthropic-token": {**anthropic, "bearer_token": SESSION_TOKEN},
    }


async def test_the_daemons_environment_headers_never_reach_an_own_provider(
    start_daemon: DaemonFactory, server: FakeModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in DAEMON_HEADERS.items():
        monkeypatch.setenv(name, value)
    daemon = start_daemon()
    own = own_providers(server)
    async with connect(daemon) as client:
        for model, provider in own.items():
            session = await client.create_session(model=model, provider=provider)
            await session.send_and_wait("Hi")
        for model in ("gpt-test", "claude-test"):
            configured = await client.create_session(model=model)
            await configured.send_and_wait("Hi")
    *mine, configured_openai, configured_anthropic = server.requests
    assert len(mine) == len(own)

    for model, request in zip(own, mine, strict=True):
        assert request.body["model"] == model
        assert "daemon" not in repr(request.headers), (model, request.headers)
        for header in ("x-daemon-secret", "openai-organization", "openai-project"):
            assert header not in request.headers, (model, header)
        credential = SESSION_TOKEN if model.endswith("token") else SESSION_KEY
        if model == "azure-key":
            assert request.headers["api-key"] == SESSION_KEY
            assert "authorization" not in request.headers
        elif model == "openai-none":
            assert request.headers["authorization"] == "Bearer no-key"
        else:
            assert request.headers["authorization"] == f"Bearer {credential}", model
            assert "api-key" not in request.headers and "x-api-key" not in request.headers
    # The configured providers get what the daemon's environment says, as before.
    assert configured_openai.headers["x-daemon-secret"] == "daemon-openai-header"
    assert configured_openai.headers["openai-organization"] == "daemon-org"
    assert configured_openai.headers["openai-project"] == "daemon-project"
    assert configured_anthropic.headers["x-daemon-secret"] == "daemon-anthropic-header"


@pytest.mark.parametrize(
    ("provider", "complaint"),
    [
        ({"type": "bedrock"}, "not one of openai, azure, anthropic"),
        ({"type": "azure", "base_url": "https://x.openai.azure.com"}, "api_version"),
        ({"type": "openai", "api_key": "k" * 8, "bearer_token": "t" * 8}, "not both"),
        ({"type": "openai", "base_url": "localhost:11434"}, "not an http:// or https:// URL"),
        (
            {"type": "openai", "wire_model": "m" * 20_000, "api_key": "k" * 17_000},
            "wire_model (20000 bytes), api_key (17000 bytes) over the limit of 16384",
        ),
    ],
)
async def test_invalid_own_provider_is_refused(
    client: CopilotClient, provider: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        await client.create_session(session_id="bad", provider=provider)
    assert refused.value.reason == "ERROR_REASON_INVALID_PROVIDER"
    assert complaint in refused.value.message
    assert await client.get_session_metadata("bad") is None
    await client.create_session(session_id="good")
    with pytest.raises(InvalidArgumentError) as refused:
        await client.resume_session("good", provider=provider)
    assert complaint in refused.value.message


async def test_own_provider_needs_a_model(client: CopilotClient, server: FakeModelServer) -> None:
    provider = ProviderConfig(base_url=f"{server.url}/v1")
    with pytest.raises(InvalidArgumentError) as refused:
        await client.create_session(provider=provider)
    assert "needs a model" in refused.value.message
    session = await client.create_session(provider=ProviderConfig(wire_model="served-name"))
    assert session.metadata.provider is not None
    assert session.metadata.provider.base_url is None  # the public endpoint of the type


async def test_own_azure_provider_with_a_token_and_a_prompt_budget(
    client: CopilotClient, server: FakeModelServer
) -> None:
    provider = ProviderConfig(
        type="azure",
        base_url=server.url,
        bearer_token=SESSION_TOKEN,
        api_version="2025-01-01-preview",
        wire_model="team-deployment",
        max_prompt_tokens=120,
    )
    session = await client.create_session(model="gpt-4o", provider=provider)
    long = "many words of context " * 8  # about 60 tokens by the estimate
    await session.send_and_wait(f"First: {long}")
    await session.send_and_wait(f"Second: {long}")
    first, second = server.requests
    assert first.path == "/openai/deployments/team-deployment/chat/completions"
    assert first.query["api-version"] == "2025-01-01-preview"
    assert first.headers["authorization"] == f"Bearer {SESSION_TOKEN}"
    assert conversation(second)[1:] == [("user", f"Second: {long}")]  # the first left out
    history = await session.get_messages()
    truncation = next(e for e in history if e.type is T.SESSION_TRUNCATION)
    assert (truncation.data.token_limit, truncation.data.messages_removed) == (120, 2)


async def test_an_answer_over_the_size_limit_is_stopped_and_kept_as_partial(
    start_daemon: DaemonFactory, server: FakeModelServer
) -> None:
    """A model that never stops cannot write an event no reader could carry."""
    limit = 64 * 1024
    daemon = start_daemon(args=("--max-prompt-bytes", str(limit)))
    chunk = "é" * 4000  # 8,000 bytes: the cut falls inside a two-byte character
    server.script(Reply(chunks=(chunk,) * 40), Reply(chunks=(chunk,) * 4), error(400, "x" * 9000))
    async with connect(daemon) as client:
        session = await client.create_session(model=MODEL_OF["openai"])
        with pytest.raises(SessionFailedError) as failed:
            await session.send_and_wait("Talk forever")
        assert failed.value.event.data.error_type == "answer_too_large"
        assert f"passed {limit} bytes" in (failed.value.event.data.message or "")
        history = await session.get_messages()
        assert types(history[1:]) == [
            T.USER_MESSAGE,
            T.ASSISTANT_TURN_START,
            T.ASSISTANT_MESSAGE,
            T.SESSION_ERROR,
            T.ASSISTANT_TURN_END,
        ]
        partial = history[3]
        assert partial.data.partial is True
        kept = partial.data.content or ""
        assert kept == "é" * (limit // 2)  # as many whole characters as fit
        assert history[5].data.reason == "error"

        # An answer under the limit is whole; a provider's long error body is clipped.
        answer = await session.send_and_wait("A short one")
        assert answer is not None and answer.data.content == chunk * 4
        with pytest.raises(SessionFailedError) as failed:
            await session.send_and_wait("And now?")
        message = failed.value.event.data.message or ""
        assert len(message) == 4096 and message.endswith("x…") and "400 Bad Request" in message
