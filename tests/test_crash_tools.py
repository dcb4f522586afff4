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
from copilotd.events import SessionEvent as SessionEventProto
from copilotd.providers import ToolCall
from copilotd.sessions.state import RunningTurn, SessionState, TurnHost
from copilotd.sessions.tool_calls import ToolCalls
from copilotd.sessions.tools import ToolResult, interrupted_result
from copilotd.store import SessionRecord
from tests.support.daemon_process import DaemonProcess

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
