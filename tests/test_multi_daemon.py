"""Several real daemons on one PostgreSQL database: one turn at a time per session
across them, events and lifecycle seen through any of them, and a daemon killed
mid-turn taken over by another once its lease expires."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc, events_pb2
from copilotd.cli.main import STORE_DSN_ENV
from copilotd.sessions.recovery import TAKEN_OVER
from tests.support.daemon_process import DaemonProcess
from tests.support.postgres import PostgresCluster

# Short, so that a takeover comes soon after a kill; renewed every third of it.
LEASE_SECONDS = 1.5
WAIT = 60.0  # the bound of every wait for an event: a hang fails, it never passes
INTERRUPTED = events_pb2.TurnEndReason.TURN_END_REASON_INTERRUPTED
COMPLETED = events_pb2.TurnEndReason.TURN_END_REASON_COMPLETED


def start_daemons(root: Path, dsn: str, count: int, offline_delay: str) -> list[DaemonProcess]:
    config = root / "config.toml"
    config.write_text(f"[store]\nlease_seconds = {LEASE_SECONDS}\n")
    os.chmod(config, 0o600)
    daemons = []
    for n in range(count):
        daemon = DaemonProcess(
            root / f"d{n}",
            ["--config", str(config), "--offline-delay", offline_delay],
            extra_env={STORE_DSN_ENV: dsn},
        )
        daemons.append(daemon.start())
    return daemons


@pytest.fixture
def dsn(postgres_cluster: PostgresCluster, postgres_database: str) -> str:
    return postgres_cluster.dsn(postgres_database)


@pytest.fixture
def three(short_tmp: Path, dsn: str) -> Iterator[list[DaemonProcess]]:
    daemons = start_daemons(short_tmp, dsn, 3, "0.01")
    yield daemons
    for daemon in daemons:
        daemon.kill()


@pytest.fixture
def two_slow(short_tmp: Path, dsn: str) -> Iterator[list[DaemonProcess]]:
    # Each turn lasts about 6 x 0.4 s: long enough to kill a daemon in the middle.
    daemons = start_daemons(short_tmp, dsn, 2, "0.4")
    yield daemons
    for daemon in daemons:
        daemon.kill()


def stub(channel: grpc.aio.Channel) -> copilot_pb2_grpc.CopilotServiceAsyncStub:
    return copilot_pb2_grpc.CopilotServiceStub(channel)


def channel_to(daemon: DaemonProcess) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"unix:{daemon.socket_path}")


async def events_of(
    call: grpc.aio.UnaryStreamCall[pb.StreamEventsRequest, pb.StreamEventsResponse],
) -> AsyncIterator[events_pb2.SessionEvent]:
    async for response in call:
        for event in response.events:
            yield event


async def persisted_until(
    events: AsyncIterator[events_pb2.SessionEvent], done: int
) -> list[events_pb2.SessionEvent]:
    """Persisted events from a stream until ``done`` turns have ended."""
    seen: list[events_pb2.SessionEvent] = []
    ended = 0
    async for event in events:
        if event.ephemeral:
            continue
        seen.append(event)
        if event.type == "assistant.turn_end":
            ended += 1
            if ended == done:
                break
    return seen


def check_log(events: list[events_pb2.SessionEvent]) -> None:
    """Gap-free, duplicate-free, and one turn at a time: each turn's events contiguous."""
    assert [event.sequence for event in events] == list(range(1, len(events) + 1))
    open_turn = ""
    for event in events:
        if event.type == "assistant.turn_start":
            assert not open_turn, f"turn {event.assistant_turn_start.turn_id} began inside another"
            open_turn = event.assistant_turn_start.turn_id
        elif event.type == "assistant.turn_end":
            assert event.assistant_turn_end.turn_id == open_turn
            open_turn = ""


async def test_clients_on_three_daemons_send_to_one_session_at_once(
    three: list[DaemonProcess],
) -> None:
    channels = [channel_to(daemon) for daemon in three]
    try:
        session = await stub(channels[0]).CreateSession(pb.CreateSessionRequest())
        session_id = session.session.session_id

        async def client(n: int) -> list[tuple[str, pb.SendMessageAndWaitResponse]]:
            answers = []
            for k in range(4):
                prompt = f"question {k} from the client of daemon {n}"
                answer = await stub(channels[n]).SendMessageAndWait(
                    pb.SendMessageAndWaitRequest(
                        session_id=session_id, prompt=prompt, message_id=f"c{n}-m{k}"
                    ),
                    timeout=WAIT,
                )
                answers.append((prompt, answer))
            return answers

        results = await asyncio.gather(*(client(n) for n in range(3)))
        for n, answers in enumerate(results):
            for k, (prompt, answer) in enumerate(answers):
                # Each caller gets the answer to its own message, wherever its turn ran.
                assert answer.message_id == f"c{n}-m{k}"
                assert answer.turn_end.assistant_turn_end.user_message_id == f"c{n}-m{k}"
                assert answer.turn_end.assistant_turn_end.reason == COMPLETED
                assert prompt in answer.answer.assistant_message.content
        listed = await stub(channels[1]).ListEvents(
            pb.ListEventsRequest(session_id=session_id, page_size=1000)
        )
        events = list(listed.events)
        check_log(events)
        # A message sent again through another daemon (a lost connection) is recognised.
        again = await stub(channels[2]).SendMessage(
            pb.SendMessageRequest(session_id=session_id, prompt="ignored", message_id="c0-m0")
        )
        original = next(e for e in events if e.id == "c0-m0")
        assert (again.message_id, again.sequence, again.queued) == (
            "c0-m0",
            original.sequence,
            False,
        )
        with pytest.raises(grpc.aio.AioRpcError) as answered:
            await stub(channels[1]).SendMessageAndWait(
                pb.SendMessageAndWaitRequest(session_id=session_id, prompt="x", message_id="c1-m1")
            )
        assert answered.value.code() == grpc.StatusCode.ALREADY_EXISTS
        after = await stub(channels[0]).GetSession(pb.GetSessionRequest(session_id=session_id))
        assert after.session.last_sequence == len(events)
        sent = [e.id for e in events if e.type == "user.message"]
        assert sorted(sent) == sorted(f"c{n}-m{k}" for n in range(3) for k in range(4))
    finally:
        for channel in channels:
            await channel.close()


async def test_events_and_lifecycle_written_through_one_daemon_reach_the_others(
    three: list[DaemonProcess],
) -> None:
    a, b = channel_to(three[0]), channel_to(three[1])
    try:
        lifecycle = stub(b).WatchLifecycle(pb.WatchLifecycleRequest())
        await asyncio.wait_for(lifecycle.initial_metadata(), WAIT)  # the watch is live
        announced = lifecycle.__aiter__()
        session = await stub(a).CreateSession(pb.CreateSessionRequest())
        session_id = session.session.session_id
        created = await asyncio.wait_for(anext(announced), WAIT)
        while created.type != "session.created":
            created = await asyncio.wait_for(anext(announced), WAIT)
        assert created.session_id == session_id
        follow = events_of(
            stub(b).StreamEvents(pb.StreamEventsRequest(session_id=session_id, after_sequence=0))
        )
        for k in range(3):
            await stub(a).SendMessage(pb.SendMessageRequest(session_id=session_id, prompt=f"p{k}"))
        seen = await asyncio.wait_for(persisted_until(follow, 3), WAIT)
        check_log(seen)
        assert [e.user_message.content for e in seen if e.type == "user.message"] == [
            "p0",
            "p1",
            "p2",
        ]
        await stub(a).DeleteSession(pb.DeleteSessionRequest(session_id=session_id))
        deleted = await asyncio.wait_for(anext(announced), WAIT)
        while deleted.type != "session.deleted":
            deleted = await asyncio.wait_for(anext(announced), WAIT)
        assert deleted.session_id == session_id
        lifecycle.cancel()
    finally:
        await a.close()
        await b.close()


async def test_a_daemon_killed_mid_turn_is_taken_over_and_its_queue_runs_elsewhere(
    two_slow: list[DaemonProcess],
) -> None:
    doomed, survivor = two_slow
    a, b = channel_to(doomed), channel_to(survivor)
    try:
        session = await stub(a).CreateSession(pb.CreateSessionRequest())
        session_id = session.session.session_id
        on_a = events_of(
            stub(a).StreamEvents(pb.StreamEventsRequest(session_id=session_id, after_sequence=0))
        )
        on_b = events_of(
            stub(b).StreamEvents(pb.StreamEventsRequest(session_id=session_id, after_sequence=0))
        )
        first = await stub(a).SendMessage(
            pb.SendMessageRequest(session_id=session_id, prompt="first", message_id="m1")
        )
        assert not first.queued
        # Sent through the other daemon while the first turn runs: it queues, in the database.
        second = await stub(b).SendMessage(
            pb.SendMessageRequest(session_id=session_id, prompt="second", message_id="m2")
        )
        assert second.queued
        async for event in on_a:  # the first turn is streaming its answer on A
            if event.type == "assistant.message_delta":
                break
        doomed.kill()
        seen = await asyncio.wait_for(persisted_until(on_b, 2), WAIT)
        check_log(seen)
        ends = [e.assistant_turn_end for e in seen if e.type == "assistant.turn_end"]
        assert [(end.user_message_id, end.reason) for end in ends] == [
            ("m1", INTERRUPTED),
            ("m2", COMPLETED),
        ]
        assert ends[0].message == TAKEN_OVER
        assert "taken over" not in "".join(doomed.output)  # the survivor did it
        assert "closed turn" in survivor.wait_for_output(TAKEN_OVER)
    finally:
        await a.close()
        await b.close()
