"""Tool calls across a daemon's SIGKILL: what a client's handlers answer while
the daemon is down still reaches it, and the crash harness's tool checks."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from copilot_client import (
    CopilotClient,
    PermissionHandler,
    SessionEvent,
    SessionEventType,
    Tool,
    ToolInvocation,
)
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
