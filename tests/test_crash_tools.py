"""Tool calls across kills: what a client's handlers answer while the daemon is
down still reaches it, and an answer whose client dies mid-commit is recorded once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest

from copilot_client import (
    CopilotClient,
    PermissionHandler,
    SessionEvent,
    SessionEventType,
    Tool,
    ToolInvocation,
)
from copilotd.events import (
    ASSISTANT_TURN_END,
    PERMISSION_COMPLETED,
    PERMISSION_REQUESTED,
    TOOL_EXECUTION_COMPLETE,
    TOOL_EXECUTION_START,
    make_event,
)
from copilotd.events import SessionEvent as SessionEventProto
from copilotd.providers import ToolCall
from copilotd.sessions.state import RunningTurn, SessionState, TurnHost
from copilotd.sessions.tool_calls import ToolCalls
from copilotd.sessions.tools import ToolResult, interrupted_result
from copilotd.store import SessionRecord
from tests.support.daemon_process import DaemonProcess
from tests.support.store_check import check_tool_calls

WAIT = 60.0  # the bound of every wait: a hang fails, it never passes
KEY = {"type": "object", "properties": {"key": {"type": "string"}}}


class Resent(logging.Handler):
    """Sets ``event`` when the client logs that it will send an answer again."""

    def __init__(self, event: asyncio.Event) -> None:
        super().__init__(logging.INFO)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if "sending it again" in record.getMessage():
            self.event.set()


@pytest.mark.parametrize("needs_permission", [False, True])
async def test_an_answer_given_while_the_daemon_is_down_reaches_it_after_restart(
    short_tmp: Path, needs_permission: bool
) -> None:
    """The handler (or the permission handler) finishes while the daemon is dead:
    its result (decision) is sent again once the daemon is back, and the turn ends."""
    daemon = DaemonProcess(short_tmp, ["--offline-delay", "0.01"]).start()
    release, running, refused = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow(invocation: ToolInvocation) -> str:
        running.set()
        await release.wait()
        return f"slow answer for {invocation.arguments['key']}"

    async def hesitant(*_: object) -> bool:
        running.set()
        await release.wait()
        return True

    tool = Tool("slow", "Answers late", KEY, slow, skip_permission=not needs_permission)
    handler = Resent(refused)
    tools_log = logging.getLogger("copilot_client.tools")
    level = tools_log.level
    tools_log.setLevel(logging.INFO)
    tools_log.addHandler(handler)
    try:
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            session = await client.create_session(
                tools=[tool],
                on_permission_request=hesitant
                if needs_permission
                else PermissionHandler.approve_all,
            )
            ended = asyncio.Event()
            seen: list[SessionEvent] = []

            def on_event(event: SessionEvent) -> None:
                seen.append(event)
                if event.type is SessionEventType.ASSISTANT_TURN_END:
                    ended.set()

            session.on(on_event)
            await session.send('call slow {"key": "k1"}')
            await asyncio.wait_for(running.wait(), WAIT)
            daemon.kill()
            release.set()  # the answer meets a dead daemon...
            await asyncio.wait_for(refused.wait(), WAIT)
            await asyncio.to_thread(daemon.start)  # ...and reaches the restarted one
            await asyncio.wait_for(ended.wait(), WAIT)
            events = await session.get_messages()
    finally:
        tools_log.removeHandler(handler)
        tools_log.setLevel(level)
        daemon.kill()
    completes = [e for e in events if e.type is SessionEventType.TOOL_EXECUTION_COMPLETE]
    assert [(e.data.result_type, e.data.result_text) for e in completes] == [
        ("success", "slow answer for k1")
    ]
    end = next(e for e in events if e.type is SessionEventType.ASSISTANT_TURN_END)
    assert end.data.reason == "completed"


class GatedHost:
    """Stands in for the session service at the one seam the race needs: its
    ``append`` waits for the test's go, then commits, as the daemon's group
    committer does whoever still waits for it (it shields the commit)."""

    tool_call_timeout = None

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.go = asyncio.Event()
        self.appended: list[SessionEventProto] = []

    async def append(
        self, session_id: str, events: Sequence[SessionEventProto], **_: object
    ) -> tuple[SessionRecord, list[SessionEventProto]]:
        self.entered.set()
        commit = asyncio.ensure_future(self._commit(events))
        return await asyncio.shield(commit)

    async def _commit(
        self, events: Sequence[SessionEventProto]
    ) -> tuple[SessionRecord, list[SessionEventProto]]:
        await self.go.wait()
        self.appended.extend(events)
        return SessionRecord(), list(events)


def types_of(events: list[SessionEventProto]) -> list[str]:
    return [event.type for event in events]


@pytest.mark.parametrize("what", ["result", "approval", "denial"])
async def test_an_answer_whose_client_goes_away_mid_commit_is_recorded_once(what: str) -> None:
    """A client's RPC cancelled while its result (decision) is being committed (the
    client was killed, its deadline passed): the commit goes through, so the call
    (request) must not be open again for a second one. Before the fix the pending
    timeout then recorded a second result (the crash harness found it on PostgreSQL)."""
    host = GatedHost()
    calls = ToolCalls(cast(TurnHost, host))
    turn = RunningTurn(session_id="s", turn_id="t", user_message_id="m")
    turn.open_calls["c1"] = ToolCall("c1", "lookup", "{}")
    if what != "result":
        turn.awaiting_permission.add("c1")
    state = SessionState(last_sequence=0, last_event_id="", turn=turn)
    if what == "result":
        answering = calls.answer(state, "s", "c1", ToolResult(text_result_for_llm="42"))
    else:
        answering = calls.decide(state, "s", "c1", approved=what == "approval", reason="")
    client = asyncio.ensure_future(answering)
    await asyncio.wait_for(host.entered.wait(), WAIT)
    client.cancel()  # the client went away; its result is already with the committer
    host.go.set()
    with pytest.raises(asyncio.CancelledError):
        await client
    committed = list(host.appended)
    # What a restart, an abort or the pending timeout would close now: nothing
    # answered, and for an approval only the call itself (it waits for its result).
    assert await calls.close_calls(turn, interrupted_result("pending timeout")) == (
        1 if what == "approval" else 0
    )
    assert "c1" not in turn.awaiting_permission
    closing = host.appended[len(committed) :]
    assert (
        types_of(committed)
        == {
            "result": ["tool.execution_complete"],
            "approval": ["permission.completed", "external_tool.requested"],
            "denial": ["permission.completed", "tool.execution_complete"],
        }[what]
    )
    assert types_of(closing) == (["tool.execution_complete"] if what == "approval" else [])


def tool_log(*steps: tuple[str, str]) -> list[SessionEventProto]:
    """Events of turn ``t`` from (kind, call id) steps: start, ask, decide, result, end."""
    kinds = {
        "start": TOOL_EXECUTION_START,
        "ask": PERMISSION_REQUESTED,
        "decide": PERMISSION_COMPLETED,
        "result": TOOL_EXECUTION_COMPLETE,
    }
    events = []
    for sequence, (kind, call_id) in enumerate(steps, start=1):
        if kind == "end":
            event = make_event(ASSISTANT_TURN_END, turn_id="t")
        else:
            event = make_event(kinds[kind], tool_call_id=call_id, turn_id="t")
        event.sequence = sequence
        events.append(event)
    return events


def record_of(open_turn: str = "", *pending: tuple[str, bool]) -> SessionRecord:
    record = SessionRecord(open_turn_id=open_turn)
    for call_id, awaiting in pending:
        record.metadata.pending_tool_calls.add(tool_call_id=call_id, awaiting_permission=awaiting)
    return record


def test_the_store_check_passes_calls_that_pair_up() -> None:
    closed = tool_log(
        ("start", "c1"), ("ask", "c1"), ("start", "c2"), ("decide", "c1"), ("result", "c2"),
        ("result", "c1"), ("end", ""),
    )  # fmt: skip
    assert check_tool_calls("s", closed, record_of()) == (["c1", "c2"], [], [])
    waiting = tool_log(("start", "c1"), ("ask", "c1"), ("start", "c2"))
    record = record_of("t", ("c1", True), ("c2", False))
    assert check_tool_calls("s", waiting, record) == (["c1", "c2"], ["c1", "c2"], ["c1"])


@pytest.mark.parametrize(
    ("steps", "record", "complaint"),
    [
        ([("start", "c1"), ("result", "c1"), ("result", "c1"), ("end", "")], None, "second result"),
        ([("start", "c1"), ("end", "")], None, "has no result, and its turn ended"),
        ([("result", "c1"), ("end", "")], None, "no call before it"),
        ([("start", "c1"), ("end", ""), ("result", "c1")], None, "after its turn ended"),
        ([("start", "c1"), ("start", "c1")], None, "started twice"),
        (
            [("start", "c1"), ("ask", "c1"), ("decide", "c1"), ("decide", "c1"), ("end", "")],
            None,
            "a second decision",
        ),
        ([("start", "c1"), ("ask", "c1"), ("result", "c1"), ("end", "")], None, "before its"),
        ([("start", "c1"), ("decide", "c1")], None, "no request before it"),
        ([("start", "c1")], record_of("t"), "pending calls"),
        ([("start", "c1"), ("ask", "c1")], record_of("t", ("c1", False)), "awaiting_permission"),
    ],
)
def test_the_store_check_sees_calls_that_do_not_pair_up(
    steps: list[tuple[str, str]], record: SessionRecord | None, complaint: str
) -> None:
    """The verdict is not vacuous: each defect a crash could leave fails it."""
    default = record_of("t", ("c1", False))
    with pytest.raises(AssertionError, match=complaint):
        check_tool_calls("s", tool_log(*steps), record if record is not None else default)
