"""A history that outweighs a gRPC message is read back whole, by every path.

A real daemon with default limits (gRPC messages up to 8 MiB) holds a session
of 120 turns with 80 KB prompts, about 9.8 MB of events. Before answers were
bounded by bytes, a ListEvents page of 500 events weighed more than the limit
and gRPC refused to send it: ``get_messages()`` failed, and so did a
StreamEvents catch-up, a ResumeSession tail of 1000 events and the export.
Now every answer that carries events holds at most ``PAGE_BYTES`` of
them (or one larger event), and a page cut short by size still leads to the
next one.

The same holds for a page of sessions whose metadata carries long system
messages. The raw channel here has no receive limit, so what is measured is
what the daemon sends, not what the client accepts.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from copilot_client import CopilotClient, SessionConfig, SessionEventType
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd import events as ev
from copilotd.events import SessionEvent
from copilotd.limits import DEFAULT_MAX_PROMPT_BYTES, PAGE_BYTES, byte_batches, max_message_bytes
from tests.support.cli import copilotd, ok
from tests.support.daemon_process import DaemonProcess, short_temp_dir
from tests.support.session_events import check_log_integrity
from tests.support.wire import read_response

MiB = 1 << 20
LIMIT = max_message_bytes(DEFAULT_MAX_PROMPT_BYTES)
TURNS = 120
PROMPT_BYTES = 80_000
EVENTS_PER_TURN = 4  # user.message, turn_start, assistant.message, turn_end
RAW_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
BIG = "big"


def prompt(index: int, size: int = PROMPT_BYTES) -> str:
    return f"{index:04d}".ljust(size, "x")


def weight(events: Sequence[SessionEvent]) -> int:
    return sum(event.ByteSize() for event in events)


def check_bounded(events: Sequence[SessionEvent], answer_bytes: int) -> None:
    """What every answer carrying events must be: under the budget, or one event alone."""
    assert answer_bytes <= LIMIT
    assert len(events) == 1 or weight(events) <= PAGE_BYTES


def check_chain(events: Sequence[SessionEvent], first: int = 1) -> None:
    assert [e.sequence for e in events] == list(range(first, first + len(events)))
    for previous, event in itertools.pairwise(events):
        assert event.parent_id == previous.id


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    root = short_temp_dir("large")
    process = DaemonProcess(root).start()
    yield process
    process.kill()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def client(daemon: DaemonProcess) -> AsyncIterator[CopilotClient]:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        yield client


@pytest.fixture(scope="module")
async def stub(daemon: DaemonProcess) -> AsyncIterator[copilot_pb2_grpc.CopilotServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}", options=RAW_OPTIONS) as ch:
        yield copilot_pb2_grpc.CopilotServiceStub(ch)


@pytest.fixture(scope="module")
async def big(client: CopilotClient, stub: copilot_pb2_grpc.CopilotServiceAsyncStub) -> int:
    """The session of the reproduction; returns its event count when built."""
    session = await client.create_session(session_id=BIG)
    for index in range(TURNS):
        await session.send_and_wait(prompt(index), timeout=60)
    count = 1 + EVENTS_PER_TURN * TURNS
    # One page of 500 events, as get_messages() asks for, would be over the limit.
    first_500 = await read_all(stub, BIG, page_size=100)
    assert len(first_500) == count and weight(first_500[:500]) > LIMIT
    return count


async def read_all(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub,
    session_id: str,
    *,
    page_size: int,
    newest_first: bool = False,
    pages: list[pb.ListEventsResponse] | None = None,
) -> list[SessionEvent]:
    """A bare ListEvents walk, following next_cursor until it is 0."""
    order = pb.EVENT_ORDER_NEWEST_FIRST if newest_first else pb.EVENT_ORDER_OLDEST_FIRST
    events: list[SessionEvent] = []
    cursor = 0
    while True:
        page = await stub.ListEvents(
            pb.ListEventsRequest(
                session_id=session_id, cursor=cursor, page_size=page_size, order=order
            )
        )
        if pages is not None:
            pages.append(page)
        events.extend(page.events)
        if not page.next_cursor:
            return events
        assert page.events, "a cursor must come with events"
        cursor = page.next_cursor


def test_the_page_budget_is_what_the_proto_documents() -> None:
    assert 2 * MiB == PAGE_BYTES
    assert PAGE_BYTES <= LIMIT // 4


def test_byte_batches_split_a_burst_in_order() -> None:
    small = [ev.make_event(ev.USER_MESSAGE, content="s" * 100) for _ in range(3)]
    huge = ev.make_event(ev.USER_MESSAGE, content="h" * 5000)
    size = small[0].ByteSize()
    assert list(byte_batches([])) == []
    assert list(byte_batches(small, 3 * size)) == [small]
    assert list(byte_batches(small, 3 * size - 1)) == [small[:2], small[2:]]
    assert list(byte_batches([*small, huge, small[0]], 2 * size)) == [
        small[:2],
        small[2:],
        [huge],
        [small[0]],
    ]
    assert list(byte_batches([huge], 1)) == [[huge]]


async def test_get_messages_returns_every_event_of_a_history_over_the_limit(
    client: CopilotClient, big: int
) -> None:
    session = await client.resume_session(BIG)
    history = await session.get_messages()
    check_log_integrity(history)
    assert len(history) >= big + 1  # and the resume just recorded
    contents = [e.data.content for e in history if e.type is SessionEventType.USER_MESSAGE]
    assert contents == [prompt(index) for index in range(TURNS)]
    assert history[-1].type is SessionEventType.SESSION_RESUME
    # A page cut short by bytes still leads on: reading from the middle works too.
    assert [e.sequence for e in await session.get_messages(after_sequence=200, limit=150)] == list(
        range(201, 351)
    )


async def test_a_list_events_walk_gets_everything_in_pages_under_the_limit(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, big: int
) -> None:
    figures: list[str] = []
    for page_size, newest_first in ((500, False), (1000, False), (1000, True)):
        pages: list[pb.ListEventsResponse] = []
        events = await read_all(
            stub, BIG, page_size=page_size, newest_first=newest_first, pages=pages
        )
        if newest_first:
            events.reverse()
        assert len(events) >= big
        check_chain(events)
        assert len(pages) > 4  # short pages: the history weighs ~5 budgets
        for page in pages:
            check_bounded(page.events, page.ByteSize())
        # Every page but the last was cut by size, not by count, and has a cursor.
        assert all(len(page.events) < page_size and page.next_cursor for page in pages[:-1])
        assert pages[-1].next_cursor == 0
        figures.append(
            f"page_size {page_size}{' newest first' if newest_first else ''}: {len(pages)} "
            f"pages of at most {max(p.ByteSize() for p in pages)} bytes"
        )
    print(
        f"\nFIGURES large history: {len(events)} events, {weight(events)} bytes, read by "
        f"ListEvents with {'; '.join(figures)} (limit {LIMIT})"
    )


async def test_stream_events_replays_the_whole_history_then_goes_live(
    client: CopilotClient, stub: copilot_pb2_grpc.CopilotServiceAsyncStub, big: int
) -> None:
    call = stub.StreamEvents(pb.StreamEventsRequest(session_id=BIG, after_sequence=0))
    replayed: list[SessionEvent] = []
    responses = 0
    while True:
        response = await read_response(call)
        responses += 1
        check_bounded(response.events, response.ByteSize())
        replayed.extend(response.events)
        if response.live:
            break
    assert responses > 4
    assert len(replayed) >= big
    check_chain(replayed)
    # Then live: a new message arrives on the same stream.
    session = await client.resume_session(BIG)
    await session.send("after the replay")
    while True:
        response = await read_response(call)
        assert response.live
        stored = [e for e in response.events if not e.ephemeral]
        check_chain(stored, first=replayed[-1].sequence + 1)
        replayed.extend(stored)
        if any(e.user_message.content == "after the replay" for e in stored):
            break
    call.cancel()


async def test_a_subscriber_that_fell_far_behind_gets_the_burst_in_bounded_batches(
    client: CopilotClient, stub: copilot_pb2_grpc.CopilotServiceAsyncStub
) -> None:
    # The subscriber stops reading while ~30 MB is written: the transport
    # holds a few MB, the rest piles up in its live buffer as one batch.
    session = await client.create_session(session_id="burst")
    call = stub.StreamEvents(pb.StreamEventsRequest(session_id="burst", after_sequence=1))
    first = await read_response(call)
    assert first.live and not first.events
    turns, size = 48, 640_000
    for index in range(turns):
        await session.send_and_wait(prompt(index, size), timeout=60)
    last = 1 + EVENTS_PER_TURN * turns
    stored: list[SessionEvent] = []
    largest = 0
    while not stored or stored[-1].sequence < last:
        response = await read_response(call)
        check_bounded(response.events, response.ByteSize())
        largest = max(largest, response.ByteSize())
        stored.extend(e for e in response.events if not e.ephemeral)
    call.cancel()
    check_chain(stored, first=2)
    assert [e.user_message.content for e in stored if e.type == ev.USER_MESSAGE] == [
        prompt(index, size) for index in range(turns)
    ]
    print(
        f"\nFIGURES large history: a {weight(stored)}-byte burst to a subscriber that "
        f"stopped reading arrived whole, the largest response {largest} bytes"
    )


async def test_resume_returns_the_newest_events_that_fit(
    client: CopilotClient, stub: copilot_pb2_grpc.CopilotServiceAsyncStub, big: int
) -> None:
    resumed = await stub.ResumeSession(pb.ResumeSessionRequest(session_id=BIG, tail_events=1000))
    tail = list(resumed.tail)
    check_bounded(tail, resumed.ByteSize())
    check_chain(tail, first=tail[0].sequence)
    assert tail[-1].type == ev.SESSION_RESUME
    assert tail[-1].sequence == resumed.session.last_sequence
    assert 1 < len(tail) < big
    # The event just before the tail is the one that did not fit.
    before = await stub.ListEvents(
        pb.ListEventsRequest(
            session_id=BIG,
            cursor=tail[0].sequence,
            page_size=1,
            order=pb.EVENT_ORDER_NEWEST_FIRST,
        )
    )
    assert [e.sequence for e in before.events] == [tail[0].sequence - 1]
    assert weight(tail) + before.events[0].ByteSize() > PAGE_BYTES
    # The client's resume (a tail of 50) and what follows work as usual.
    session = await client.resume_session(BIG)
    assert session.session_id == BIG
    assert (await session.get_messages(after_sequence=resumed.session.last_sequence))[
        0
    ].type is SessionEventType.SESSION_RESUME


def test_export_and_sessions_show_carry_every_event(
    daemon: DaemonProcess, big: int, tmp_path: Path
) -> None:
    exported = tmp_path / "big.jsonl"
    ok(copilotd(daemon, "export", BIG, "-o", str(exported)))
    lines = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
    events = [line for line in lines if line.get("kind") == "event"]
    assert len(events) >= big
    assert [int(e["event"]["sequence"]) for e in events] == list(range(1, len(events) + 1))
    shown = json.loads(ok(copilotd(daemon, "sessions", "show", BIG, "--json")))
    assert [int(e["sequence"]) for e in shown["events"]] == list(range(1, len(events) + 1))
    shown_prompts = [e["user_message"]["content"] for e in shown["events"] if "user_message" in e]
    assert shown_prompts[:TURNS] == [prompt(index) for index in range(TURNS)]


async def test_sessions_with_long_system_messages_are_listed_in_pages_under_the_limit(
    daemon: DaemonProcess, client: CopilotClient, stub: copilot_pb2_grpc.CopilotServiceAsyncStub
) -> None:
    # Ten system messages of 900 KB: one page of them would be over the limit.
    ids = [f"system-{index}" for index in range(10)]
    for session_id in ids:
        await client.create_session(
            SessionConfig(session_id=session_id, system_message={"content": "s" * 900_000})
        )
    listed = [metadata.session_id for metadata in await client.list_sessions()]
    assert listed[: len(ids)] == ids[::-1]
    sizes: list[int] = []
    token = ""
    walked: list[str] = []
    while True:
        page = await stub.ListSessions(pb.ListSessionsRequest(page_size=1000, page_token=token))
        assert page.ByteSize() <= LIMIT
        assert len(page.sessions) == 1 or sum(m.ByteSize() for m in page.sessions) <= PAGE_BYTES
        sizes.append(page.ByteSize())
        walked += [metadata.session_id for metadata in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert walked == listed and len(sizes) > 3
    shown = json.loads(ok(copilotd(daemon, "sessions", "list", "--json")))
    assert [session["session_id"] for session in shown] == listed
