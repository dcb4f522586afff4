"""Real models failing: retries, Retry-After, authentication errors, 5xx, dropped
and cut streams, a missing key; and the context budget that trims a long session.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from copilot_client import (
    CopilotClient,
    SessionFailedError,
)
from copilotd.sessions.token_budget import message_tokens
from copilotd.sessions.turns import BUILTIN_SYSTEM_MESSAGE
from tests.support.fake_model_server import FakeModelServer, Reply, error, stream
from tests.support.model_providers import (
    COMPLETED_TURN,
    FAILED_TURN,
    MAX_BACKOFF,
    MODEL_OF,
    OPENAI_KEY,
    RETRIES,
    SMALL_OUTPUT,
    SMALL_WINDOW,
    T,
    as_chat,
    conversation,
    streamed_text,
)
from tests.support.session_events import Recorder, types

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
