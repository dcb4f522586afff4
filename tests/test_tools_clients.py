"""Tools answered by separate client processes: killed mid-call, taken over, racing.

Each client is a real process (tests/support/clients/tool_worker.py) holding
the tool with a handler; the daemon is real and its offline model calls the
tool for the prompt line ``call get_weather {...}``.
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
            ],
            cwd=ROOT,
            env=daemon.env,
            stdout=subprocess.PIPE,
            text=True,
        )

        # Lines read while waiting for "ready" (a handler may run before it).
        self.backlog: list[dict[str, Any]] = []

    def read(self) -> dict[str, Any]:
        """The next line: one put aside while waiting for "ready", else a new one."""
        if self.backlog:
            return self.backlog.pop(0)
        return self.read_new()

    def read_new(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"worker exited with {self.process.wait()}"
        return json.loads(line)  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


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
) -> ToolWorker:
    worker = ToolWorker(daemon, session_id, answer, pending, permission)
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


async def test_two_clients_racing_for_one_call_record_one_result(
    daemon: DaemonProcess, workers: list[ToolWorker]
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(tools=[WEATHER])
        racers = [
            await start(workers, daemon, session.session_id, answer, "continue")
            for answer in ("sunny", "rainy")
        ]
        answer = await session.send_and_wait(PROMPT)
        running = [await read(racer) for racer in racers]
        events = await session.get_events()
    assert running[0] == running[1]  # both ran the same call
    [complete] = completes(events)
    text = complete.proto.tool_execution_complete.result.text_result_for_llm
    assert text in ("sunny in Paris", "rainy in Paris")
    assert answer is not None
    assert answer.data.content == f'get_weather returned: "{text}".'
