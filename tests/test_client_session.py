"""copilot_client against the real daemon: sessions, turns, events, paging.

Every test talks to a real ``copilotd serve`` process (real LMDB, real gRPC on
a Unix socket). Turns are answered by the daemon's offline model, which
repeats the prompt and quotes the earlier ones; ``--offline-delay`` makes a
turn slow enough to watch, time out on or abort.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

import copilotd
from copilot_client import (
    CopilotClient,
    CopilotError,
    InvalidArgumentError,
    MessageOptions,
    SessionConfig,
    SessionEvent,
    SessionEventType,
    SessionExistsError,
    SessionNotFoundError,
)
from tests.support.daemon_process import DaemonProcess
from tests.support.session_events import EVENT_WAIT, TURN, Recorder, check_log_integrity, types

T = SessionEventType


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[CopilotClient]:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        yield client


@pytest.fixture
async def slow_client(slow_daemon: DaemonProcess) -> AsyncIterator[CopilotClient]:
    async with CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client:
        yield client


# -- create, send, history ---------------------------------------------------


async def test_create_send_and_wait_and_history(client: CopilotClient) -> None:
    async with await client.create_session(
        SessionConfig(session_id="cfg-form", model="gpt-5")
    ) as session:
        assert session.session_id == "cfg-form"
        assert session.metadata.model == "gpt-5"
        answer = await session.send_and_wait(MessageOptions(prompt="Hello there"))
        assert answer is not None
        assert answer.type is T.ASSISTANT_MESSAGE
        assert answer.data.content is not None
        assert "offline model" in answer.data.content
        assert 'You said: "Hello there"' in answer.data.content
        assert "'gpt-5'" in answer.data.content  # the session's model reached the turn
        assert answer.data.partial is False

        history = await session.get_messages()
        assert types(history) == [T.SESSION_START, *TURN]
        check_log_integrity(history)
        start, user, turn_start, message, turn_end = history
        assert (start.data.session_id, start.data.model) == ("cfg-form", "gpt-5")
        assert user.data.content == "Hello there"
        assert message == answer
        assert message.data.user_message_id == user.id
        assert turn_start.data.user_message_id == user.id
        assert turn_end.data.reason == "completed"
        assert turn_end.data.turn_id == turn_start.data.turn_id == message.data.turn_id

    # The handle is detached; the session stays in the daemon.
    with pytest.raises(CopilotError, match="destroyed"):
        await session.send("after destroy")
    metadata = await client.get_session_metadata("cfg-form")
    assert metadata is not None and metadata.last_sequence == 5

    kw = await client.create_session(session_id="kw-form", system_message="Be brief.")
    assert kw.session_id == "kw-form"
    assert kw.metadata.model == "offline"  # the daemon's default
    answer = await kw.send_and_wait("Second session")
    assert answer is not None and answer.data.content is not None
    assert 'You said: "Second session"' in answer.data.content
    assert "no earlier messages" in answer.data.content  # sessions do not share history
    history = await kw.get_messages()
    assert types(history) == [T.SESSION_START, *TURN]
    check_log_integrity(history)
    # The Copilot SDK's newer names for get_messages and destroy.
    assert await kw.get_events() == history
    await kw.disconnect()
    with pytest.raises(CopilotError, match="destroyed"):
        await kw.get_events()
    again = await client.resume_session("kw-form")
    assert types(await again.get_events())[:-1] == types(history)  # then its session.resume


async def test_answer_depends_on_history(client: CopilotClient) -> None:
    session = await client.create_session(session_id="memory")
    await session.send_and_wait("Let's talk about lighthouses")
    answer = await session.send_and_wait("What were we discussing?")
    assert answer is not None and answer.data.content is not None
    assert 'You said: "What were we discussing?"' in answer.data.content
    assert "We were discussing" in answer.data.content
    assert '"Let\'s talk about lighthouses"' in answer.data.content
    history = await session.get_messages()
    assert types(history) == [T.SESSION_START, *TURN, *TURN]
    check_log_integrity(history)


async def test_bad_calls_are_refused(client: CopilotClient) -> None:
    session = await client.create_session(session_id="taken")
    with pytest.raises(SessionExistsError) as exists:
        await client.create_session(SessionConfig(session_id="taken"))
    assert exists.value.status is grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(TypeError, match="modle"):
        await client.create_session(modle="gpt-5")
    with pytest.raises(InvalidArgumentError) as empty:
        await session.send("   ")
    assert empty.value.reason == "ERROR_REASON_EMPTY_PROMPT"
    assert types(await session.get_messages()) == [T.SESSION_START]


# -- events: on() ------------------------------------------------------------


async def test_handlers_receive_the_turn_in_order(
    client: CopilotClient, caplog: pytest.LogCaptureFixture
) -> None:
    session = await client.create_session(session_id="watched")
    received = Recorder()
    later: list[SessionEvent] = []
    later_idle = asyncio.Event()

    def broken(event: SessionEvent) -> None:
        raise RuntimeError("handler bug")

    async def async_handler(event: SessionEvent) -> None:
        await asyncio.sleep(0)  # really suspends: handlers are awaited in order
        later.append(event)
        if event.type is T.SESSION_IDLE:
            later_idle.set()

    session.on(broken)
    unsubscribe = session.on(received)
    session.on(async_handler)
    with caplog.at_level(logging.ERROR, logger="copilot_client"):
        answer = await session.send_and_wait("Tell me a story")
        await received.wait_type(T.SESSION_IDLE)
        async with asyncio.timeout(EVENT_WAIT):
            await later_idle.wait()

    assert answer is not None
    kinds = types(received.events)
    deltas = [e for e in received.events if e.type is T.ASSISTANT_MESSAGE_DELTA]
    assert len(deltas) >= 2
    assert kinds == [
        T.USER_MESSAGE,
        T.ASSISTANT_TURN_START,
        *[T.ASSISTANT_MESSAGE_DELTA] * len(deltas),
        T.ASSISTANT_MESSAGE,
        T.ASSISTANT_TURN_END,
        T.SESSION_IDLE,
    ]
    assert "".join(d.data.delta_content or "" for d in deltas) == answer.data.content
    assert all(d.ephemeral and d.data.message_id == answer.data.message_id for d in deltas)
    assert received.events[0].data.content == "Tell me a story"
    assert received.events[-2].data.reason == "completed"
    assert [e.id for e in later] == [e.id for e in received.events]
    # The persisted ones are exactly the history after session.start.
    history = await session.get_messages()
    assert [e.id for e in received.persisted] == [e.id for e in history[1:]]
    assert "handler bug" in caplog.text

    unsubscribe()
    later_idle.clear()
    before = list(received.events)
    await session.send_and_wait("Another one")
    async with asyncio.timeout(EVENT_WAIT):
        await later_idle.wait()
    assert received.events == before  # unsubscribed: nothing more
    assert types(later).count(T.ASSISTANT_TURN_END) == 2  # the others go on


async def test_two_clients_see_each_others_turns(daemon: DaemonProcess) -> None:
    async with (
        CopilotClient(socket_path=daemon.socket_path, auto_start=False) as first,
        CopilotClient(socket_path=daemon.socket_path, auto_start=False) as second,
    ):
        mine = await first.create_session(session_id="shared")
        await mine.attach()  # watched by this client from now on
        await mine.send_and_wait("First question")

        theirs = await second.resume_session("shared")
        history = await theirs.get_messages()
        assert types(history) == [T.SESSION_START, *TURN, T.SESSION_RESUME]
        check_log_integrity(history)
        resume = history[-1]
        assert theirs.metadata.last_sequence == resume.sequence == 6
        assert resume.data.event_count == 5
        assert resume.data.already_in_use is True  # the first client's stream is attached
        assert resume.data.turn_running is False

        watched = Recorder()
        theirs.on(watched)
        answer = await mine.send_and_wait("Second question")
        assert answer is not None
        await watched.wait_type(T.ASSISTANT_TURN_END)
        assert types(watched.persisted) == TURN
        assert watched.persisted[0].data.content == "Second question"
        assert watched.persisted[2].id == answer.id
        # The other client's history is the same log, resume included.
        assert [e.id for e in await theirs.get_messages()] == [
            e.id for e in await mine.get_messages()
        ]


async def test_deleted_session(daemon: DaemonProcess) -> None:
    async with (
        CopilotClient(socket_path=daemon.socket_path, auto_start=False) as owner,
        CopilotClient(socket_path=daemon.socket_path, auto_start=False) as other,
    ):
        session = await owner.create_session(session_id="doomed")
        watched = Recorder()
        session.on(watched)
        await session.send_and_wait("hi")  # the stream is live from here on
        await other.delete_session("doomed")

        with pytest.raises(SessionNotFoundError):
            await session.send("anyone?")
        with pytest.raises(SessionNotFoundError):
            await session.send_and_wait("anyone there?")
        assert await owner.get_session_metadata("doomed") is None
        with pytest.raises(SessionNotFoundError):
            await owner.resume_session("doomed")
        with pytest.raises(SessionNotFoundError):
            await other.delete_session("doomed")
        assert [s.session_id for s in await other.list_sessions()] == []
        assert not any(e.data.content == "anyone?" for e in watched.events)


# -- slow turns: timeout, turn in progress, abort ----------------------------


async def test_send_and_wait_timeout_does_not_abort(slow_client: CopilotClient) -> None:
    session = await slow_client.create_session(session_id="slow")
    watched = Recorder()
    session.on(watched)
    with pytest.raises(TimeoutError):
        await session.send_and_wait("Take your time", timeout=0.5)
    end = await watched.wait_type(T.ASSISTANT_TURN_END)
    assert end.data.reason == "completed"
    history = await session.get_messages()
    assert types(history) == [T.SESSION_START, *TURN]
    assert history[-1].id == end.id
    assert history[3].data.partial is False
    assert history[3].data.content is not None
    assert 'You said: "Take your time"' in history[3].data.content


async def test_abort_keeps_the_partial_answer(slow_client: CopilotClient) -> None:
    session = await slow_client.create_session(session_id="stoppable")
    watched = Recorder()
    session.on(watched)
    assert await session.abort() is False  # nothing runs yet

    waiting = asyncio.create_task(session.send_and_wait("Tell me everything", timeout=60))
    await watched.wait_type(T.ASSISTANT_MESSAGE_DELTA)

    assert await session.abort("user pressed stop") is True
    answer = await waiting
    # send_and_wait returns the partial message that the aborted turn kept.
    assert answer is not None
    assert answer.type is T.ASSISTANT_MESSAGE and answer.data.partial is True
    streamed = "".join(
        e.data.delta_content or ""
        for e in watched.events
        if e.type is T.ASSISTANT_MESSAGE_DELTA
        and e.data.user_message_id == answer.data.user_message_id
    )
    assert streamed and answer.data.content == streamed
    assert streamed.startswith("This is the offline model")

    history = await session.get_messages()
    assert types(history) == [
        T.SESSION_START,
        T.USER_MESSAGE,
        T.ASSISTANT_TURN_START,
        T.ABORT,
        T.ASSISTANT_MESSAGE,
        T.ASSISTANT_TURN_END,
    ]
    check_log_integrity(history)
    assert history[1].data.content == "Tell me everything"
    assert history[3].data.reason == "user pressed stop"
    assert history[4] == answer
    assert (history[5].data.reason, history[5].data.message) == ("aborted", "user pressed stop")
    assert await session.abort() is False  # nothing runs any more

    # The session takes the next turn, and the model saw the partial answer's prompt.
    again = await session.send_and_wait("Start over", timeout=60)
    assert again is not None and again.data.partial is False
    assert again.data.content is not None
    assert '"Tell me everything"' in again.data.content
    history = await session.get_messages()
    assert types(history[6:]) == TURN
    assert history[-1].data.reason == "completed"


# -- the event stream across a daemon crash ----------------------------------


async def test_stream_reattaches_after_sigkill_and_restart(slow_daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(session_id="crash")
        watched = Recorder()
        session.on(watched)
        waiting = asyncio.create_task(session.send_and_wait("Before the crash", timeout=60))
        await watched.wait_type(T.ASSISTANT_MESSAGE_DELTA)

        slow_daemon.kill()
        await asyncio.to_thread(slow_daemon.start)

        # The restarted daemon closed the cut turn; the waiter sees that end
        # on re-attach, and the turn had no answer.
        assert await waiting is None
        answer = await session.send_and_wait("After the restart", timeout=60)
        assert answer is not None and answer.data.content is not None
        assert '"Before the crash"' in answer.data.content
        await watched.wait_type(T.SESSION_IDLE, count=1)

        history = await session.get_messages()
        check_log_integrity(history)
        assert types(history) == [
            T.SESSION_START,
            T.USER_MESSAGE,
            T.ASSISTANT_TURN_START,
            T.ASSISTANT_TURN_END,
            *TURN,
        ]
        assert history[3].data.reason == "interrupted"
        # Every persisted event reached the handler once: before, during and after the outage.
        assert [e.sequence for e in watched.persisted] == [e.sequence for e in history[1:]]
        assert [e.id for e in watched.persisted] == [e.id for e in history[1:]]


# -- reading: paging, listing, metadata --------------------------------------


async def test_get_messages_pages(client: CopilotClient) -> None:
    session = await client.create_session(session_id="long")
    turns = 130  # 1 + 4 * 130 = 521 events: more than one page of 500
    for i in range(turns):
        await session.send_and_wait(f"prompt {i}")
    events = await session.get_messages()
    assert len(events) == 1 + 4 * turns
    check_log_integrity(events)
    assert [e.data.content for e in events if e.type is T.USER_MESSAGE] == [
        f"prompt {i}" for i in range(turns)
    ]
    assert [e.sequence for e in await session.get_events(after_sequence=10, limit=505)] == list(
        range(11, 516)
    )
    assert [e.sequence for e in await session.get_messages(after_sequence=515)] == list(
        range(516, 522)
    )
    assert [e.sequence for e in await session.get_messages(limit=3)] == [1, 2, 3]
    assert await session.get_messages(after_sequence=521) == []


async def test_listing_metadata_and_ping(client: CopilotClient) -> None:
    assert await client.ping() == copilotd.__version__
    assert await client.get_last_session_id() is None
    assert await client.list_sessions() == []
    assert await client.get_session_metadata("s0") is None

    for i in range(7):
        await client.create_session(session_id=f"s{i}")
    newest_first = [f"s{i}" for i in range(6, -1, -1)]
    assert [s.session_id for s in await client.list_sessions()] == newest_first
    assert [s.session_id for s in await client.list_sessions(limit=3)] == newest_first[:3]
    page = await client.list_sessions_page(page_size=5)
    assert [s.session_id for s in page.sessions] == newest_first[:5]
    assert page.next_page_token
    page = await client.list_sessions_page(page_size=5, page_token=page.next_page_token)
    assert [s.session_id for s in page.sessions] == newest_first[5:]
    assert page.next_page_token is None
    assert await client.get_last_session_id() == "s6"

    # Activity moves a session to the front.
    session = await client.resume_session("s2")
    await session.send_and_wait("Bring s2 back up")
    assert await client.get_last_session_id() == "s2"
    assert [s.session_id for s in await client.list_sessions(limit=2)] == ["s2", "s6"]
    metadata = await client.get_session_metadata("s2")
    assert metadata is not None
    assert metadata.session_id == "s2"
    assert metadata.last_sequence == 6  # start, resume, one turn
    assert metadata.message_count == 2
    assert metadata.summary == "Bring s2 back up"
    assert metadata.model == "offline"
    assert metadata.turn_running is False
    assert metadata.start_time.tzinfo is not None
    assert metadata.modified_time >= metadata.start_time
