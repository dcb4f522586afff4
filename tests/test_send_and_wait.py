"""send_and_wait in one call (SendMessageAndWait), and what keeps it safe.

Without event handlers, ``send_and_wait`` is one ``SendMessageAndWait`` call
carrying a message id of the client's choosing. These tests check the
call's contract over the bare protocol (outcome, cancellation, message ids
sent again) and, through the client, that it rides out a daemon crash with
the message recorded exactly once, queued or running, as the streamed path
does. Every daemon is a real ``copilotd serve`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from copilot_client import (
    CopilotClient,
    MessageAlreadyAnsweredError,
    SessionEventType,
    SessionNotFoundError,
)
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc, events_pb2
from copilot_client.service import map_rpc_error
from copilot_client.wire import REASON_METADATA_KEY as REASON
from tests.support.daemon_process import DaemonProcess
from tests.support.session_events import (
    EVENT_WAIT,
    TURN,
    Recorder,
    check_log_integrity,
    types,
)

T = SessionEventType
TurnEndReason = events_pb2.TurnEndReason


@pytest.fixture
async def stub(daemon: DaemonProcess) -> AsyncIterator[copilot_pb2_grpc.CopilotServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield copilot_pb2_grpc.CopilotServiceStub(channel)


async def _create(stub: copilot_pb2_grpc.CopilotServiceAsyncStub, session_id: str) -> None:
    await stub.CreateSession(
        pb.CreateSessionRequest(config=pb.SessionConfig(session_id=session_id))
    )


async def _log(stub: copilot_pb2_grpc.CopilotServiceAsyncStub, session_id: str) -> list[str]:
    page = await stub.ListEvents(pb.ListEventsRequest(session_id=session_id, page_size=1000))
    return [event.type for event in page.events]


class Watch:
    """Event types of a session as they happen, over a bare StreamEvents call
    (so that watching records no session.resume)."""

    def __init__(self, daemon: DaemonProcess, session_id: str) -> None:
        self.seen: list[str] = []
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._run(daemon, session_id))

    async def _run(self, daemon: DaemonProcess, session_id: str) -> None:
        async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
            stub = copilot_pb2_grpc.CopilotServiceStub(channel)
            with contextlib.suppress(grpc.aio.AioRpcError):  # the daemon is killed
                async for response in stub.StreamEvents(
                    pb.StreamEventsRequest(session_id=session_id)
                ):
                    self.seen.extend(event.type for event in response.events)
                    self._changed.set()

    async def wait_for(self, event_type: T, count: int = 1) -> None:
        async with asyncio.timeout(EVENT_WAIT):
            while self.seen.count(event_type.value) < count:
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        self._task.cancel()


# -- the call over the bare protocol -----------------------------------------


async def test_outcome_is_the_turn_as_logged(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub,
) -> None:
    await _create(stub, "one-call")
    outcome = await stub.SendMessageAndWait(
        pb.SendMessageAndWaitRequest(
            session_id="one-call", prompt="What is LMDB?", message_id="m-1"
        )
    )
    page = await stub.ListEvents(pb.ListEventsRequest(session_id="one-call"))
    user, start, answer, end = page.events[1:]
    assert outcome.message_id == user.id == "m-1"
    assert user.user_message.content == "What is LMDB?"
    assert outcome.answer == answer
    assert '"What is LMDB?"' in outcome.answer.assistant_message.content
    assert outcome.turn_end == end
    assert end.assistant_turn_end.reason == TurnEndReason.TURN_END_REASON_COMPLETED
    assert end.assistant_turn_end.user_message_id == "m-1"
    assert not outcome.HasField("error")
    assert start.assistant_turn_start.user_message_id == "m-1"


async def test_a_message_id_is_recorded_once(
    daemon: DaemonProcess, stub: copilot_pb2_grpc.CopilotServiceAsyncStub
) -> None:
    await _create(stub, "ids")
    first = await stub.SendMessage(
        pb.SendMessageRequest(session_id="ids", prompt="hello", message_id="again")
    )
    second = await stub.SendMessage(
        pb.SendMessageRequest(session_id="ids", prompt="hello", message_id="again")
    )
    assert first.message_id == second.message_id == "again"
    assert second.sequence == first.sequence == 2
    # Once its turn has ended (waiting for it while it runs is another case,
    # tested above), the same id is refused rather than run again.
    watch = Watch(daemon, "ids")
    try:
        await watch.wait_for(T.ASSISTANT_TURN_END)
    finally:
        watch.close()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendMessageAndWait(
            pb.SendMessageAndWaitRequest(session_id="ids", prompt="hello", message_id="again")
        )
    # Its turn ran once: the same id waited for again is refused, not re-run.
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert dict(caught.value.trailing_metadata() or ())[REASON] == (
        "ERROR_REASON_MESSAGE_ALREADY_ANSWERED"
    )
    assert "'again'" in (caught.value.details() or "")
    assert type(map_rpc_error(caught.value, socket_path="s")) is MessageAlreadyAnsweredError
    assert (await _log(stub, "ids")).count("user.message") == 1

    for bad in ("has space", "x" * 65, "ünï"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendMessageAndWait(
                pb.SendMessageAndWaitRequest(session_id="ids", prompt="hi", message_id=bad)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "message_id" in (caught.value.details() or "")
    assert (await _log(stub, "ids")).count("user.message") == 1


async def test_cancelled_call_leaves_the_turn_running(slow_daemon: DaemonProcess) -> None:
    async with (
        grpc.aio.insecure_channel(f"unix:{slow_daemon.socket_path}") as channel,
        CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client,
    ):
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        session = await client.create_session(session_id="patient")
        watched = Recorder()
        session.on(watched)
        call = stub.SendMessageAndWait(
            pb.SendMessageAndWaitRequest(session_id="patient", prompt="take your time")
        )
        # Given up once the turn runs (a short deadline instead could expire
        # before the daemon even stored the message, on a loaded machine).
        await watched.wait_type(T.ASSISTANT_TURN_START)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        end = await watched.wait_type(T.ASSISTANT_TURN_END)
        assert end.data.reason == "completed"
        history = await session.get_messages()
        assert types(history) == [T.SESSION_START, *TURN]
        assert history[3].data.partial is False


async def test_same_id_twice_while_queued_waits_for_one_turn(slow_daemon: DaemonProcess) -> None:
    async with grpc.aio.insecure_channel(f"unix:{slow_daemon.socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        await _create(stub, "queue")
        watch = Watch(slow_daemon, "queue")
        first = asyncio.ensure_future(
            stub.SendMessageAndWait(
                pb.SendMessageAndWaitRequest(session_id="queue", prompt="first")
            )
        )
        await watch.wait_for(T.ASSISTANT_TURN_START)
        second = pb.SendMessageRequest(session_id="queue", prompt="second", message_id="q-2")
        queued = await stub.SendMessage(second)
        assert queued.queued
        second_again = pb.SendMessageAndWaitRequest(
            session_id="queue", prompt="second", message_id="q-2"
        )
        outcomes = await asyncio.gather(
            stub.SendMessageAndWait(second_again), stub.SendMessageAndWait(second_again), first
        )
        assert outcomes[0] == outcomes[1]
        assert outcomes[0].message_id == "q-2"
        assert '"second"' in outcomes[0].answer.assistant_message.content
        assert '"first"' in outcomes[2].answer.assistant_message.content
        log = await _log(stub, "queue")
        assert log.count("user.message") == 2
        assert log.count("assistant.turn_end") == 2
        watch.close()


# -- through the client ------------------------------------------------------


async def test_waiting_client_counts_as_using_the_session(slow_daemon: DaemonProcess) -> None:
    async with (
        CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as mine,
        CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as theirs,
    ):
        session = await mine.create_session(session_id="in-use")
        watcher = await theirs.resume_session("in-use")
        watched = Recorder()
        watcher.on(watched)
        waiting = asyncio.ensure_future(session.send_and_wait("a slow one"))
        await watched.wait_type(T.ASSISTANT_TURN_START)
        await watcher.destroy()  # now only the waiting call uses the session

        during = await theirs.resume_session("in-use")
        assert (await waiting) is not None
        after = await theirs.resume_session("in-use")
        resumes = [e for e in await after.get_messages() if e.type is T.SESSION_RESUME]
        assert [(e.data.already_in_use, e.data.turn_running) for e in resumes] == [
            (False, False),  # the first resume: nobody was there yet
            (True, True),  # while send_and_wait waited for the turn
            (False, False),  # after: no stream stays open behind send_and_wait
        ]
        await during.destroy()


async def test_deleted_while_waiting(slow_daemon: DaemonProcess) -> None:
    async with (
        CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as mine,
        CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as theirs,
    ):
        session = await mine.create_session(session_id="doomed")
        watcher = await theirs.resume_session("doomed")
        watched = Recorder()
        watcher.on(watched)
        waiting = asyncio.ensure_future(session.send_and_wait("will anyone answer?"))
        await watched.wait_type(T.ASSISTANT_TURN_START)
        await theirs.delete_session("doomed")
        with pytest.raises(SessionNotFoundError):
            await waiting


async def test_crash_while_running_records_the_message_once(slow_daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(session_id="crash")
        watch = Watch(slow_daemon, "crash")
        waiting = asyncio.ensure_future(session.send_and_wait("Before the crash", timeout=60))
        await watch.wait_for(T.ASSISTANT_TURN_START)

        slow_daemon.kill()
        watch.close()
        await asyncio.to_thread(slow_daemon.start)

        # The restarted daemon closed the cut turn; the lost call found its
        # message in the log and waited for that end instead of sending again.
        assert await waiting is None
        history = await session.get_messages()
        check_log_integrity(history)
        assert types(history) == [
            T.SESSION_START,
            T.USER_MESSAGE,
            T.ASSISTANT_TURN_START,
            T.ASSISTANT_TURN_END,
        ]
        assert history[3].data.reason == "interrupted"
        answer = await session.send_and_wait("After the restart", timeout=60)
        assert answer is not None and '"Before the crash"' in (answer.data.content or "")


async def test_crash_while_queued_runs_the_message_once(slow_daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(session_id="queued")
        watch = Watch(slow_daemon, "queued")
        running = asyncio.ensure_future(session.send_and_wait("first", timeout=60))
        await watch.wait_for(T.ASSISTANT_TURN_START)
        queued = asyncio.ensure_future(session.send_and_wait("second", timeout=60))
        await watch.wait_for(T.PENDING_MESSAGES_MODIFIED)

        slow_daemon.kill()
        watch.close()
        await asyncio.to_thread(slow_daemon.start)

        assert await running is None  # interrupted by the crash
        answer = await queued  # run from the durable queue after the restart
        assert answer is not None and 'You said: "second"' in (answer.data.content or "")
        history = await session.get_messages()
        check_log_integrity(history)
        prompts = [e.data.content for e in history if e.type is T.USER_MESSAGE]
        assert prompts == ["first", "second"]
        assert history[-1].type is T.ASSISTANT_TURN_END
        assert history[-1].data.reason == "completed"
