"""Handlers and waiters ride out a daemon outage longer than any fixed number of retries.

The daemon is SIGKILLed in the middle of a turn and started again only once
the client has tried to re-attach more often than it once gave up after (5
times). The client's log records each attempt, so the test waits for those
records instead of a span of time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

import copilot_client._event_stream as event_stream_module
from copilot_client import CopilotClient, SessionEventType
from tests.support.daemon_process import DaemonProcess
from tests.support.session_events import (
    EVENT_WAIT,
    TURN,
    Recorder,
    check_log_integrity,
    types,
)

T = SessionEventType
# More re-attach attempts than the client once made before going quiet for good.
OUTAGE_ATTEMPTS = 8

pytestmark = pytest.mark.timeout(180)


class ReattachCounter(logging.Handler):
    """Counts the client's re-attach attempts (its debug log), waking a waiter."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.attempts = 0
        self.gave_up: str | None = None
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("re-attaching to "):
            self.attempts += 1
        elif message.startswith("event stream of session "):
            self.gave_up = message
        self.changed.set()

    async def wait_for(self, attempts: int) -> None:
        async with asyncio.timeout(EVENT_WAIT):
            while self.attempts < attempts:
                assert self.gave_up is None, f"after {self.attempts} attempts: {self.gave_up}"
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def reattaches(monkeypatch: pytest.MonkeyPatch) -> Iterator[ReattachCounter]:
    # Short delays between attempts keep the outage brief; how many attempts
    # there are is what the tests are about.
    monkeypatch.setattr(event_stream_module, "STREAM_RETRY_DELAY", 0.01)
    monkeypatch.setattr(event_stream_module, "STREAM_RETRY_MAX_DELAY", 0.05)
    counter = ReattachCounter()
    logger = logging.getLogger("copilot_client")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(counter)
    yield counter
    logger.removeHandler(counter)
    logger.setLevel(level)


async def test_send_and_wait_with_a_handler_rides_out_a_long_outage(
    slow_daemon: DaemonProcess, reattaches: ReattachCounter
) -> None:
    async with CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(session_id="outage")
        watched = Recorder()
        session.on(watched)
        waiting = asyncio.create_task(session.send_and_wait("Before the outage", timeout=120))
        await watched.wait_type(T.ASSISTANT_TURN_START)

        slow_daemon.kill()
        await reattaches.wait_for(OUTAGE_ATTEMPTS)
        await asyncio.to_thread(slow_daemon.start)

        # The restarted daemon closed the cut turn; the waiter sees its end
        # (no answer) instead of a DaemonUnavailableError for a stored message.
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


async def test_handlers_hear_turns_after_a_long_outage(
    daemon: DaemonProcess, reattaches: ReattachCounter
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(session_id="quiet")
        watched = Recorder()
        session.on(watched)
        await session.attach()

        daemon.kill()
        await reattaches.wait_for(OUTAGE_ATTEMPTS)
        await asyncio.to_thread(daemon.start)

        # Another client's turn, after the outage: the handler hears all of it.
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as other:
            theirs = await other.resume_session("quiet")
            await theirs.send("Anyone still listening?")
        await watched.wait_type(T.ASSISTANT_TURN_END)
        heard = [e for e in watched.persisted if e.type is not T.SESSION_RESUME]
        assert types(heard) == TURN
        assert heard[0].data.content == "Anyone still listening?"
        assert not [e for e in watched.events if e.type is T.SESSION_ERROR]
