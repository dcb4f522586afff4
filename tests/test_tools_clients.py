"""Tools answered by separate client processes: routed to one, killed mid-call,
taken over.

Each client is a real process (tests/support/clients/tool_worker.py) holding
a tool with a handler; the daemon is real and its offline model calls the
tool for the prompt line ``call get_weather {...}``. The daemon sends each
call to ONE attached client holding the tool (the one attached longest), and
to another when that one goes away.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from copilot_client import CopilotClient, SessionEvent, Tool
from tests.support.daemon_process import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
WORKER = "tests.support.clients.tool_worker"
PROMPT = 'call get_weather {"city": "Paris"}'
# skip_permission here and in the worker's tool (its default): these tests are
# about calls; tests/test_tool_permissions_clients.py covers permissions.
WEATHER = Tool("get_weather", "The weather in a city", {"type": "object"}, skip_permission=True)


class ToolWorker:
    def __init__(
        self,
        daemon: DaemonProcess,
        session_id: str,
        answer: str,
        pending: str,
        permission: str = "skip",
        tool: str = "get_weather",
    ):
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.clients.tool_worker",
                session_id,
                answer,
                pending,
                permission,
                tool,
            ],
            cwd=ROOT,
            env=daemon.env,
            stdout=subprocess.PIPE,
            text=True,
        )

        # Lines read while waiting for "ready" (a handler may run before it).
        self.backlog: list[dict[str, Any]] = []
        # Every line read so far.
        self.printed: list[dict[str, Any]] = []

    def read(self) -> dict[str, Any]:
        """The next line: one put aside while waiting for "ready", else a new one."""
        if self.backlog:
            return self.backlog.pop(0)
        return self.read_new()

    def read_new(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"worker exited with {self.process.wait()}"
        self.printed.append(json.loads(line))
        return self.printed[-1]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def runs(self) -> list[str]:
        """Kill the worker; the ids of the calls its handler ran, from all it printed."""
        self.kill()
        assert self.process.stdout is not None
        printed = [*self.printed, *map(json.loads, self.process.stdout.read().splitlines())]
        return [line["running"] for line in printed if "running" in line]


@pytest.fixture
def workers() -> Iterator[list[ToolWorker]]:
    started: list[ToolWorker] = []
    yield started
    for worker in started:
        worker.kill()


async def start(
    workers: list[ToolWorker],
    daemon: DaemonProcess,
    session_id: str,
    answer: str,
    pending: str,
    permission: str = "skip",
    tool: str = "get_weather",
) -> ToolWorker:
    worker = ToolWorker(daemon, session_id, answer, pending, permission, tool)
    workers.append(worker)
    # Lines before "ready" are new ones: re-reading the put-aside ones would
    # loop forever on the first of them.
    while (line := await asyncio.to_thread(worker.read_new)) != {"ready": True}:
        worker.backlog.append(line)
    return worker


def completes(events: list[SessionEvent]) -> list[SessionEvent]:
    return [e for e in events if e.type_name == "tool.execution_complete"]


async def read(worker: ToolWorker) -> dict[str, Any]:
    return await asyncio.to_thread(worker.read)


async def test_a_client_killed_mid_call_is_replaced_by_one_taking_over_its_work(
    daemon: DaemonProcess, workers: list[ToolWorker]
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[WEATHER])
        waiting = asyncio.create_task(session.send_and_wait(PROMPT))
        first = await start(workers, daemon, session.session_id, "block", "continue")
        call_id = (await read(first))["running"]
        first.kill()  # SIGKILL while its handler blocks
        second = await start(workers, daemon, session.session_id, "sunny", "continue")
        assert (await read(second)) == {"running": call_id}
        answer = await waiting
        events = await session.get_events()
    assert answer is not None
    assert answer.data.content == 'get_weather returned: "sunny in Paris".'
    [complete] = completes(events)
    assert complete.proto.tool_execution_complete.tool_call_id == call_id


async def test_a_client_resuming_without_pending_work_closes_the_call_and_talk_goes_on(
    daemon: DaemonProcess, workers: list[ToolWorker]
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[WEATHER])
        waiting = asyncio.create_task(session.send_and_wait(PROMPT))
        first = await start(workers, daemon, session.session_id, "block", "continue")
        call_id = (await read(first))["running"]
        first.kill()
        await start(workers, daemon, session.session_id, "sunny", "close")
        answer = await waiting
        assert answer is not None
        assert answer.data.content is not None
        assert answer.data.content.startswith('get_weather returned: "interrupted: no client')
        follow_up = await session.send_and_wait("and now?")
        events = await session.get_events()
    assert follow_up is not None
    [complete] = completes(events)
    data = complete.proto.tool_execution_complete
    assert (data.tool_call_id, data.success) == (call_id, False)


async def test_of_two_clients_holding_the_tool_exactly_one_runs_each_call(
    daemon: DaemonProcess, workers: list[ToolWorker]
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[WEATHER])
        holders = [
            await start(workers, daemon, session.session_id, answer, "continue")
            for answer in ("sunny", "rainy")
        ]
        answers = [await session.send_and_wait(PROMPT) for _ in range(2)]
        events = await session.get_events()
    runs = [holder.runs() for holder in holders]
    call_ids = [c.proto.tool_execution_complete.tool_call_id for c in completes(events)]
    assert len(call_ids) == 2
    # Each call ran in one process only: the first attached (no load balancing).
    assert runs == [call_ids, []]
    assert [a.data.content if a else None for a in answers] == [
        'get_weather returned: "sunny in Paris".'
    ] * 2


async def test_a_call_goes_to_another_holder_when_its_client_is_killed_mid_call(
    daemon: DaemonProcess, workers: list[ToolWorker]
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[WEATHER])
        first = await start(workers, daemon, session.session_id, "block", "continue")
        second = await start(workers, daemon, session.session_id, "rainy", "continue")
        waiting = asyncio.create_task(session.send_and_wait(PROMPT))
        call_id = (await read(first))["running"]
        first.kill()  # SIGKILL while its handler blocks: its stream ends with it
        assert (await read(second)) == {"running": call_id}
        answer = await waiting
        events = await session.get_events()
    assert answer is not None
    assert answer.data.content == 'get_weather returned: "rainy in Paris".'
    [complete] = completes(events)
    assert complete.proto.tool_execution_complete.tool_call_id == call_id
    assert second.runs() == [call_id]


async def test_a_client_holding_another_tool_never_runs_the_call(
    daemon: DaemonProcess, workers: list[ToolWorker]
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[WEATHER])
        other = await start(
            workers, daemon, session.session_id, "noon", "continue", "skip", "get_time"
        )
        holder = await start(workers, daemon, session.session_id, "sunny", "continue")
        answer = await session.send_and_wait(PROMPT)
    assert answer is not None
    assert answer.data.content == 'get_weather returned: "sunny in Paris".'
    assert other.runs() == []
    assert len(holder.runs()) == 1


async def test_after_a_daemon_restart_the_open_call_goes_to_a_client_that_attaches(
    daemon: DaemonProcess, workers: list[ToolWorker]
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[WEATHER])
        session_id = session.session_id
        first = await start(workers, daemon, session_id, "block", "continue")
        await session.send(PROMPT)
        call_id = (await read(first))["running"]
    daemon.restart_after_kill()
    first.kill()  # gone too: nobody holds the tool any more
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        watcher = await client.resume_session(session_id, continue_pending_work=True)
        ended = asyncio.Event()
        watcher.on(lambda e: ended.set() if e.type_name == "assistant.turn_end" else None)
        await watcher.attach()
        second = await start(workers, daemon, session_id, "sunny", "continue")
        assert (await read(second)) == {"running": call_id}
        await ended.wait()
        events = await watcher.get_events()
    [complete] = completes(events)
    data = complete.proto.tool_execution_complete
    assert (data.tool_call_id, data.result.text_result_for_llm) == (call_id, "sunny in Paris")
