"""A client process whose sessions call tools while the daemon (or it) is killed.

Usage: python -m tests.support.clients.tool_crash_worker NAME SESSIONS SEED PACE
       [--socket PATH ...] [--adopt SESSION_ID ...]

Like ``crash_worker`` (SESSIONS concurrent tasks, a few turns per session,
every acknowledged write printed as a JSON line at once, the process ends
when its stdin closes), but each session declares three tools and each
prompt asks the offline model to call some of them (its rule: a prompt line
``call NAME {json}`` is a call):

- ``lookup``, with a handler, ``skip_permission``: the client library runs it;
- ``guarded``, with a handler, needing permission: this process's
  ``on_permission_request`` approves it, except for a key starting with
  ``deny`` (the call then gets the daemon's ``denied`` result);
- ``manual``, declared without a handler: this process answers it with
  ``handle_pending_tool_call``, and sends the same result a second time, as a
  client retrying after a lost reply would (the daemon must not record it twice).

Every turn goes through ``send_and_wait``. When it fails (the daemon was
killed), the session is resumed, handing the calls left waiting to this
process's handlers (``continue_pending_work=True``) or, two times in five,
closing them with the daemon's synthetic result (``False``), and the message
is sent again as a new write.

``--adopt`` names sessions of a worker the harness SIGKILLed: each is resumed
like that and sent one last turn, whose answer comes after the turns queued
before it, so the sessions are left idle. With several ``--socket``s (daemons
on one PostgreSQL store) each session is created or resumed through a
daemon picked at random.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from dataclasses import dataclass, field

from copilot_client import (
    CopilotClient,
    CopilotError,
    CopilotSession,
    DaemonUnavailableError,
    PermissionInvocation,
    PermissionRequest,
    PermissionRequestResult,
    SessionEvent,
    SessionExistsError,
    SessionFailedError,
    Tool,
    ToolCallAnsweredError,
    ToolInvocation,
    UnknownToolCallError,
)
from tests.support.clients.crash_worker import RETRY_PAUSE, say

TURNS_PER_SESSION = 4
# How long one turn may take, restarts and tool calls included, before it is sent again.
WAIT_TIMEOUT = 30.0
KEY = {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}
TOOL_NAMES = ("lookup", "guarded", "manual")


def lookup(invocation: ToolInvocation) -> str:
    return f"lookup of {invocation.arguments.get('key')}"


def guarded(invocation: ToolInvocation) -> str:
    return f"guarded work on {invocation.arguments.get('key')}"


def decide(request: PermissionRequest, invocation: PermissionInvocation) -> PermissionRequestResult:
    if str(request.arguments.get("key", "")).startswith("deny"):
        return PermissionRequestResult("denied-interactively-by-user", "not this key")
    return PermissionRequestResult("approved")


TOOLS = [
    Tool("lookup", "Looks a key up", KEY, lookup, skip_permission=True),
    Tool("guarded", "Acts on a key, with permission", KEY, guarded),
    Tool("manual", "Answered by the app itself", KEY, skip_permission=True),
]


def manual_result(arguments_json: str) -> str:
    return f"manual answer for {json.loads(arguments_json or '{}').get('key')}"


def prompt(rng: random.Random, label: str) -> str:
    """A prompt asking for one to three calls, or none (about one turn in five)."""
    lines = [f"turn {label}"]
    for name in rng.sample(TOOL_NAMES, rng.choice([0, 1, 1, 2, 3])):
        key = f"deny-{label}" if name == "guarded" and rng.random() < 0.3 else label
        lines.append(f"call {name} {json.dumps({'key': key})}")
    return "\n".join(lines)


@dataclass
class Answerer:
    """Answers the ``manual`` calls of this process's sessions, each once (plus a retry)."""

    answered: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def watch(self, session: CopilotSession) -> None:
        def on_event(event: SessionEvent) -> None:
            if event.type_name == "external_tool.requested" and event.data.tool_name == "manual":
                assert event.data.tool_call_id is not None
                self.answer(session, event.data.tool_call_id, event.data.arguments_json or "")

        session.on(on_event)

    def answer(self, session: CopilotSession, call_id: str, arguments_json: str) -> None:
        if call_id in self.answered:
            return
        self.answered.add(call_id)
        task = asyncio.get_running_loop().create_task(
            self._answer(session, call_id, manual_result(arguments_json))
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, session: CopilotSession, call_id: str, result: str) -> None:
        for attempt in range(2):  # the second: a retry after a reply the client lost
            while True:
                try:
                    recorded = await session.handle_pending_tool_call(call_id, result)
                except DaemonUnavailableError:
                    await asyncio.sleep(RETRY_PAUSE)
                    continue
                except (UnknownToolCallError, ToolCallAnsweredError):
                    return  # closed meanwhile (a resume without pending work, an interruption)
                except CopilotError:
                    # This handle was destroyed (replaced after a failure): its
                    # successor answers, when it finds the call still waiting.
                    self.answered.discard(call_id)
                    return
                if attempt == 1 and recorded:
                    say(error=f"{session.session_id}: the result of {call_id} recorded twice")
                break

    async def take_waiting(self, session: CopilotSession) -> None:
        for call in await session.pending_tool_calls():
            if call.tool_name == "manual":
                self.answer(session, call.tool_call_id, json.dumps(call.arguments))


@dataclass
class Worker:
    name: str
    clients: list[CopilotClient]
    rng: random.Random
    pace: float
    answerer: Answerer = field(default_factory=Answerer)

    async def open(self, session_id: str, *, create: bool) -> CopilotSession:
        """Create (acknowledged) or resume the session through a random daemon."""
        while True:
            client = self.rng.choice(self.clients)
            session: CopilotSession | None = None
            try:
                if create:
                    session = await client.create_session(
                        session_id=session_id, tools=TOOLS, on_permission_request=decide
                    )
                    say(create=session_id)
                else:
                    session = await client.resume_session(
                        session_id,
                        tools=TOOLS,
                        on_permission_request=decide,
                        continue_pending_work=self.rng.random() < 0.6,
                    )
                self.answerer.watch(session)
                await session.attach()
                await self.answerer.take_waiting(session)
                return session
            except SessionExistsError:
                create = False  # created, but the daemon died before it answered
            except (DaemonUnavailableError, TimeoutError):
                if session is not None:  # opened, not attached: its stream would retry for ever
                    await session.destroy()
                await asyncio.sleep(RETRY_PAUSE)

    async def turn(self, session: CopilotSession, text: str) -> CopilotSession:
        """One acknowledged turn; returns the handle to go on with."""
        while True:
            try:
                answer = await session.send_and_wait(text, timeout=WAIT_TIMEOUT)
            except SessionFailedError as failure:
                # Only a broken history fails a turn here (a provider refusing it):
                # the harness stops with the reason rather than retrying for ever.
                say(error=f"{session.session_id}: a turn failed: {failure}")
                return session
            except (CopilotError, TimeoutError):
                await session.destroy()
                await asyncio.sleep(RETRY_PAUSE)
                session = await self.open(session.session_id, create=False)
                continue
            if answer is not None and answer.data.user_message_id:
                say(send=session.session_id, id=answer.data.user_message_id, answer=answer.id)
            return session

    async def adopt(self, session_id: str) -> None:
        session = await self.open(session_id, create=False)
        session = await self.turn(session, f"adopted {session_id}")
        await session.destroy()

    async def run(self, slot: int) -> None:
        generation = 0
        while True:
            session = await self.open(f"{self.name}-{slot}-{generation}", create=True)
            for index in range(TURNS_PER_SESSION):
                label = f"{session.session_id}.{index}"
                session = await self.turn(session, prompt(self.rng, label))
                await asyncio.sleep(self.rng.uniform(0, self.pace))
            await session.destroy()
            generation += 1


async def main(arguments: argparse.Namespace) -> None:
    rng = random.Random(arguments.seed)
    sockets = arguments.socket or [None]
    clients = [CopilotClient(socket_path=path, auto_start=False) for path in sockets]
    workers = [
        Worker(arguments.name, clients, random.Random(rng.random()), arguments.pace)
        for _ in range(arguments.sessions)
    ]
    try:
        if arguments.adopt:
            await asyncio.gather(*(workers[0].adopt(sid) for sid in arguments.adopt))
        tasks = [asyncio.create_task(worker.run(slot)) for slot, worker in enumerate(workers)]
        stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        done, _ = await asyncio.wait([stdin_closed, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for finished in done:
            if finished is not stdin_closed and finished.exception() is not None:
                say(error=repr(finished.exception()))
        for running in tasks:
            running.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for client in clients:
            await client.stop()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("sessions", type=int)
    parser.add_argument("seed", type=int)
    parser.add_argument("pace", type=float)
    parser.add_argument("--socket", action="append", default=[])
    parser.add_argument("--adopt", nargs="*", default=[])
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
