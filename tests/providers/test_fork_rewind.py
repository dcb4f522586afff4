"""Fork and rewind through a real daemon: what the model is sent afterwards, checked
on the strict fake model server's recorded requests, and what the store keeps.

A fork refers to its parent's log; these tests show that each branch's model
context holds exactly its own history (never the parent's events past the
fork point, never the other branch's), that a deleted parent leaves its forks
whole, and that a rewind takes the conversation back while the log keeps the
cut events.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from copilot_client import (
    CopilotClient,
    CopilotSession,
    PermissionHandler,
    PointInsideToolCallError,
    PointInsideTurnError,
    SequenceOutOfRangeError,
    SequenceRewoundError,
    SessionEventType,
    SessionNotFoundError,
    Tool,
    ToolInvocation,
    TurnRunningError,
)
from copilotd.store import LmdbStore
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import Call, FakeModelServer, Reply, calls, stream
from tests.support.model_providers import connect, conversation
from tests.support.store_check import read_all_events
from tests.support.store_ops import event_entries, purge

T = SessionEventType


def said(server: FakeModelServer, index: int = -1) -> list[tuple[str, str]]:
    """The conversation of one recorded request, the system message left out."""
    return [turn for turn in conversation(server.requests[index]) if turn[0] != "system"]


async def talk(server: FakeModelServer, session: CopilotSession, prompt: str, answer: str) -> None:
    server.script(stream(answer))
    reply = await session.send_and_wait(prompt)
    assert reply is not None and reply.data.content == answer


async def turn_ends(session: CopilotSession) -> list[int]:
    return [e.sequence for e in await session.get_messages() if e.type is T.ASSISTANT_TURN_END]


async def test_forks_go_on_independently(daemon: DaemonProcess, server: FakeModelServer) -> None:
    async with connect(daemon) as client:
        parent = await client.create_session(session_id="p")
        await talk(server, parent, "A", "a")
        await talk(server, parent, "B", "b")
        first_end = (await turn_ends(parent))[0]

        fork = await client.fork_session("p", "f")
        assert (fork.parent_session_id, fork.fork_sequence) == ("p", fork.last_sequence - 1)
        early = await client.fork_session("p", "g", up_to_sequence=first_end)
        assert early.fork_sequence == first_end

        await talk(server, parent, "P3", "p3")
        assert said(server) == [
            ("user", "A"),
            ("assistant", "a"),
            ("user", "B"),
            ("assistant", "b"),
            ("user", "P3"),
        ]
        f = await client.resume_session("f")
        await talk(server, f, "F3", "f3")
        assert said(server) == [
            ("user", "A"),
            ("assistant", "a"),
            ("user", "B"),
            ("assistant", "b"),
            ("user", "F3"),
        ]
        g = await client.resume_session("g")
        await talk(server, g, "G2", "g2")
        assert said(server) == [("user", "A"), ("assistant", "a"), ("user", "G2")]

        nested = await client.fork_session("f", "h")  # a fork of a fork
        assert nested.parent_session_id == "f"
        h = await client.resume_session("h")
        await talk(server, h, "H4", "h4")
        assert [text for role, text in said(server) if role == "user"] == ["A", "B", "F3", "H4"]

        # The parent never sees its branches.
        await talk(server, parent, "P4", "p4")
        assert [text for role, text in said(server) if role == "user"] == ["A", "B", "P3", "P4"]
        fork_events = await client.get_messages("f")
        assert [e.sequence for e in fork_events] == list(range(1, len(fork_events) + 1))
        assert fork_events[fork.fork_sequence].type is T.SESSION_FORK


async def test_a_fork_point_inside_a_turn_or_a_tool_call_is_refused(
    daemon: DaemonProcess, server: FakeModelServer
) -> None:
    async with connect(daemon) as client:
        session = await client.create_session(session_id="s", tools=[LOOKUP])
        server.script(calls(Call("lookup", {"q": "x"})), stream("found"))
        await session.send_and_wait("look it up")
        events = await session.get_messages()
        kinds = {e.type: e.sequence for e in events}
        with pytest.raises(PointInsideToolCallError) as inside_call:
            await client.fork_session("s", up_to_sequence=kinds[T.TOOL_EXECUTION_START])
        assert "tool call" in inside_call.value.message
        with pytest.raises(PointInsideTurnError) as inside_turn:
            await client.fork_session("s", up_to_sequence=kinds[T.USER_MESSAGE])
        assert f"sequence {kinds[T.USER_MESSAGE] - 1} or earlier" in inside_turn.value.message
        with pytest.raises(SequenceOutOfRangeError):
            await client.fork_session("s", up_to_sequence=len(events) + 1)
        with pytest.raises(PointInsideTurnError):
            await session.rewind(kinds[T.ASSISTANT_TURN_START])
        with pytest.raises(PointInsideToolCallError):
            await session.rewind(kinds[T.TOOL_EXECUTION_START])
        with pytest.raises(SessionNotFoundError):
            await client.fork_session("nobody")
        assert [m.session_id for m in await client.list_sessions()] == ["s"]


def lookup(invocation: ToolInvocation) -> str:
    return "the answer"


LOOKUP = Tool("lookup", "Looks a thing up", None, lookup, skip_permission=True)


async def test_deleting_a_parent_keeps_its_forks_whole(
    daemon: DaemonProcess, server: FakeModelServer
) -> None:
    async with connect(daemon) as client:
        parent = await client.create_session(session_id="p")
        await talk(server, parent, "A", "a")
        parent_events = len(await parent.get_messages())
        await client.fork_session("p", "f1")
        await client.fork_session("p", "f2")
        await client.delete_session("p")

        assert sorted(m.session_id for m in await client.list_sessions()) == ["f1", "f2"]
        with pytest.raises(SessionNotFoundError):
            await client.get_messages("p")
        f1 = await client.resume_session("f1")
        await talk(server, f1, "B", "b")
        assert said(server) == [("user", "A"), ("assistant", "a"), ("user", "B")]
        f1_events = len(await f1.get_messages())
        f2_events = len(await client.get_messages("f2"))
    daemon.terminate()
    store_path = daemon.data_dir / "store"
    # The parent's log stays whole whatever is purged: both forks read it.
    with _opened(store_path) as store:
        purge(store, 100_000)
        assert [e.sequence for e in read_all_events(store, "f2")] == list(range(1, f2_events + 1))
    own = (f1_events - parent_events) + (f2_events - parent_events)
    assert event_entries(store_path) == parent_events + own

    daemon.start()
    async with connect(daemon) as client:
        await client.delete_session("f1")
    daemon.terminate()
    with _opened(store_path) as store:
        purge(store, 100_000)
    assert event_entries(store_path) == parent_events + (f2_events - parent_events)

    daemon.start()
    async with connect(daemon) as client:
        await client.delete_session("f2")  # the last reader of p's events
    daemon.terminate()
    with _opened(store_path) as store:
        purge(store, 100_000)
    assert event_entries(store_path) == 0


class _opened:
    """The stopped daemon's LMDB store, opened for the length of a ``with``."""

    def __init__(self, path: Path) -> None:
        self._store = LmdbStore.open(path)

    def __enter__(self) -> LmdbStore:
        return self._store

    def __exit__(self, *exc_info: object) -> None:
        self._store.close()


async def test_rewind_takes_the_conversation_back(
    daemon: DaemonProcess, server: FakeModelServer
) -> None:
    async with connect(daemon) as client:
        session = await client.create_session(session_id="s")
        await talk(server, session, "keep me", "kept")
        end = (await turn_ends(session))[0]
        await talk(server, session, "forget me", "forgotten")
        before = await session.get_messages()

        rewind = await session.rewind(end, reason="wrong direction")
        assert rewind.type is T.SESSION_SNAPSHOT_REWIND
        assert (rewind.data.to_sequence, rewind.data.first_rewound_sequence) == (end, end + 1)
        assert rewind.data.last_rewound_sequence == before[-1].sequence
        assert rewind.sequence == before[-1].sequence + 1  # sequences are never reused
        assert session.metadata.rewound_events == len(before) - end

        visible = await session.get_messages()
        assert [e.sequence for e in visible] == [*range(1, end + 1), rewind.sequence]
        everything = await session.get_messages(include_rewound=True)
        assert [e.sequence for e in everything] == list(range(1, rewind.sequence + 1))

        await talk(server, session, "again", "fresh")
        assert said(server) == [("user", "keep me"), ("assistant", "kept"), ("user", "again")]
        with pytest.raises(SequenceRewoundError):
            await session.rewind(end + 1)

    daemon.restart_after_kill()  # the cut is durable: the reloaded context lacks it too
    async with connect(daemon) as client:
        session = await client.resume_session("s")
        await talk(server, session, "after restart", "still")
        users = [text for role, text in said(server) if role == "user"]
        assert users == ["keep me", "again", "after restart"]
        hits = await client.search_sessions("forget")
        assert hits.hits == []
        found = await client.search_sessions("forget", include_rewound=True)
        assert [(h.session_id, h.rewound) for h in found.hits] == [("s", True)]


async def test_rewind_waits_for_no_turn_unless_asked_to_abort_it(
    daemon: DaemonProcess, server: FakeModelServer
) -> None:
    async with connect(daemon) as client:
        session = await client.create_session(session_id="s")
        await talk(server, session, "first", "one")
        end = (await turn_ends(session))[0]
        gate = threading.Event()
        server.script(Reply(chunks=("slow", " answer"), gate=gate), stream("after"))
        await session.send("second")
        await server.wait_for_async(lambda requests: len(requests) == 2)
        with pytest.raises(TurnRunningError) as refused:
            await session.rewind(end)
        assert "abort_turn=True" in refused.value.message

        rewind = await session.rewind(end, abort_turn=True)
        gate.set()
        events = await session.get_messages(include_rewound=True)
        aborted = [e for e in events if e.type is T.ASSISTANT_TURN_END]
        assert aborted[-1].data.reason == "aborted"
        assert aborted[-1].sequence == rewind.data.last_rewound_sequence
        await talk(server, session, "third", "after")
        assert said(server) == [("user", "first"), ("assistant", "one"), ("user", "third")]


async def test_a_session_that_never_talked_can_be_forked(client: CopilotClient) -> None:
    """Its session.start alone is a point the conversation can go on from."""
    await client.create_session(session_id="empty")
    fork = await client.fork_session("empty", "copy")
    assert (fork.parent_session_id, fork.fork_sequence) == ("empty", 1)


async def test_a_fork_finds_its_inherited_events(
    daemon: DaemonProcess, server: FakeModelServer
) -> None:
    """The index holds each session's visible history: a fork's inherited events are
    found under the fork too, and still once its parent is deleted."""
    async with connect(daemon) as client:
        parent = await client.create_session(session_id="p")
        await talk(server, parent, "the zebra question", "stripes")
        await talk(server, parent, "the okapi question", "forest")
        first_end = (await turn_ends(parent))[0]
        await client.fork_session("p", "f", up_to_sequence=first_end)

        zebra = await client.search_sessions("zebra")
        assert sorted(h.session_id for h in zebra.hits) == ["f", "p"]
        assert len({h.sequence for h in zebra.hits}) == 1  # the same event, seen by both
        okapi = await client.search_sessions("okapi")
        assert [h.session_id for h in okapi.hits] == ["p"]  # past the fork point
        await client.delete_session("p")
        assert [h.session_id for h in (await client.search_sessions("zebra")).hits] == ["f"]


async def test_a_point_between_a_permission_request_and_the_call_s_result_is_refused(
    daemon: DaemonProcess, server: FakeModelServer
) -> None:
    asking = Tool("lookup", "Looks a thing up", None, lookup)  # asks for permission
    async with connect(daemon) as client:
        session = await client.create_session(
            session_id="s", tools=[asking], on_permission_request=PermissionHandler.approve_all
        )
        server.script(calls(Call("lookup", {"q": "x"})), stream("found"))
        await session.send_and_wait("look it up")
        kinds = {e.type: e.sequence for e in await session.get_messages()}
        for inside in (T.PERMISSION_REQUESTED, T.PERMISSION_COMPLETED):
            with pytest.raises(PointInsideToolCallError):
                await session.rewind(kinds[inside])
            with pytest.raises(PointInsideToolCallError):
                await client.fork_session("s", up_to_sequence=kinds[inside])
        fork = await client.fork_session("s", up_to_sequence=kinds[T.ASSISTANT_TURN_END])
        assert fork.fork_sequence == kinds[T.ASSISTANT_TURN_END]
