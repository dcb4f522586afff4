"""``expected_last_sequence`` guards every way a message enters a session.

A writer that read the session at sequence N and sends with
``expected_last_sequence=N`` must be refused (SEQUENCE_CONFLICT, nothing
written) once anything else got in first: whether its message would start a
turn or wait in the queue behind a running one, and for ``SendMessageAndWait``
as for ``SendMessage``. Two writers racing from the same N on an idle session:
exactly one wins.

The core runs in-process over a real LMDB store with an offline model slow
enough (a minute per answer) that a turn started here is still running when
the next send arrives, so the queued path is taken by construction, not by
timing. The wire test at the end checks that the servicer passes the field on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilot_client.wire import ERROR_INFO_CURRENT_SEQUENCE
from copilotd import events as ev
from copilotd.errors import SequenceConflictError
from copilotd.providers import ProviderRegistry
from copilotd.sessions.fanout import Subscription
from copilotd.sessions.service import SessionService
from copilotd.store import LmdbStore
from copilotd.store.committer import GroupCommitter
from tests.support.daemon_process import DaemonProcess
from tests.support.wire import wire_error

# Long enough that no turn started by these tests ends by itself.
NEVER_ENDING_DELTA_DELAY = 60.0
SESSION = "s"


@dataclass
class Core:
    service: SessionService
    store: LmdbStore
    # send_and_wait calls left waiting for a turn that never ends; cancelled at teardown.
    abandoned: list[asyncio.Future[Any]] = field(default_factory=list)

    def stored_prompts(self) -> list[str]:
        return [
            e.user_message.content
            for e in self.store.read_events(SESSION, limit=1000)
            if e.type == ev.USER_MESSAGE
        ]

    def queued_prompts(self) -> list[str]:
        record = self.store.get_session(SESSION)
        assert record is not None
        return [p.content for p in record.pending]

    def last_sequence(self) -> int:
        return self.service.get_session(SESSION).last_sequence

    async def send(self, how: str, prompt: str, expected: int | None) -> None:
        """Send ``prompt`` (its id is the prompt); returns once it is accepted, raises its refusal.

        ``send_and_wait`` never returns here (the turn never ends), so its
        acceptance is read from the session's live feed instead: this message
        stored, or queued.
        """
        if how == "send":
            await self.service.send_message(
                SESSION, prompt, "", expected_last_sequence=expected, message_id=prompt
            )
            return
        feed = self.service.fanout.subscribe(SESSION)
        try:
            waiting = asyncio.ensure_future(
                self.service.send_message_and_wait(
                    SESSION, prompt, "", expected_last_sequence=expected, message_id=prompt
                )
            )
            accepted = asyncio.ensure_future(accepted_in(feed, prompt))
            await asyncio.wait({waiting, accepted}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                accepted.cancel()
                waiting.result()  # the refusal
                raise AssertionError("the turn was meant to run for a minute")
            self.abandoned.append(waiting)
        finally:
            self.service.fanout.unsubscribe(feed)


async def accepted_in(feed: Subscription[ev.SessionEvent], message_id: str) -> None:
    """Returns once the feed shows ``message_id`` stored or queued."""
    while True:
        for event in await feed.next_batch():
            if event.type == ev.USER_MESSAGE and event.id == message_id:
                return
            if (
                event.type == ev.PENDING_MESSAGES_MODIFIED
                and message_id in event.pending_messages_modified.message_ids
            ):
                return


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    store = LmdbStore.open(tmp_path / "store")
    committer = GroupCommitter(store)
    committer.start()
    service = SessionService(
        store,
        committer,
        ProviderRegistry(offline_delta_delay=NEVER_ENDING_DELTA_DELAY),
        version="test",
    )
    core = Core(service, store)
    try:
        await service.create_session(pb.SessionConfig(session_id=SESSION))
        yield core
    finally:
        await service.shutdown()
        for waiting in core.abandoned:
            waiting.cancel()
        await committer.close()
        store.close()


@pytest.fixture(params=["send", "send_and_wait"])
def how(request: pytest.FixtureRequest) -> Iterator[str]:
    yield str(request.param)


async def test_a_stale_sequence_is_refused_when_the_message_would_start_a_turn(
    core: Core, how: str
) -> None:
    seen = core.last_sequence()
    await core.send("send", "first", expected=seen)
    assert core.stored_prompts() == ["first"]
    await core.service.abort_turn(SESSION, "make room")
    # The session is idle again, and has moved on from ``seen``.
    with pytest.raises(SequenceConflictError) as caught:
        await core.send(how, "stale", expected=seen)
    current = int(caught.value.metadata[ERROR_INFO_CURRENT_SEQUENCE])
    assert current == core.last_sequence() > seen
    assert core.stored_prompts() == ["first"] and core.queued_prompts() == []


async def test_a_stale_sequence_is_refused_when_the_message_would_queue(
    core: Core, how: str
) -> None:
    seen = core.last_sequence()
    await core.send("send", "first", expected=seen)
    assert core.service.get_session(SESSION).turn_running  # so the next send would queue
    with pytest.raises(SequenceConflictError):
        await core.send(how, "stale", expected=seen)
    assert core.stored_prompts() == ["first"] and core.queued_prompts() == []
    # The sequence the writer sees now is accepted, and queues.
    await core.send(how, "fresh", expected=core.last_sequence())
    assert core.queued_prompts() == ["fresh"]


async def test_two_writers_racing_on_an_idle_session_one_wins(core: Core, how: str) -> None:
    """Both pass the check in memory before either commits: the first claims the turn,
    the second queues behind it, and the store's check at the queue's commit decides."""
    seen = core.last_sequence()
    results = await asyncio.gather(
        core.send(how, "writer-A", expected=seen),
        core.send(how, "writer-B", expected=seen),
        return_exceptions=True,
    )
    assert sum(isinstance(r, SequenceConflictError) for r in results) == 1, results
    assert len(core.stored_prompts()) + len(core.queued_prompts()) == 1


async def test_send_and_wait_on_the_wire_honours_the_expected_sequence(
    daemon: DaemonProcess,
) -> None:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        await stub.CreateSession(
            pb.CreateSessionRequest(config=pb.SessionConfig(session_id="guarded"))
        )
        error = await wire_error(
            stub.SendMessageAndWait(
                pb.SendMessageAndWaitRequest(
                    session_id="guarded", prompt="late", expected_last_sequence=0
                )
            )
        )
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert error.reason == "ERROR_REASON_SEQUENCE_CONFLICT"
        assert dict(error.info.metadata) == {"current_sequence": "1"}
        listed = await stub.ListEvents(pb.ListEventsRequest(session_id="guarded"))
        assert [e.type for e in listed.events] == ["session.start"]
        answered = await stub.SendMessageAndWait(
            pb.SendMessageAndWaitRequest(
                session_id="guarded", prompt="on time", expected_last_sequence=1
            )
        )
        assert 'You said: "on time"' in answered.answer.assistant_message.content
