"""A client process for the many-apps-one-session tests.

Usage: python -m tests.support.clients.sharing_worker ROLE SESSION_ID [ARGS...]

Each role prints JSON lines on stdout: {"ready": ...} once attached, then its
results. Commands arrive as lines on stdin ("go", "finish N", "resume", ...).
Reading stdin in an executor keeps the event loop (and the event stream) running.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from copilot_client import (
    CopilotClient,
    LifecycleEvent,
    MessageOptions,
    SessionEvent,
    SessionNotFoundError,
)


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def command() -> str:
    line: str = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return line.strip()


class Observer:
    """Records what a session's stream delivers; wakes waiters by sequence number."""

    def __init__(self) -> None:
        self.persisted: list[list[Any]] = []
        self.deltas: dict[str, list[str]] = {}
        self.last_sequence = 0
        self.changed = asyncio.Event()
        self.types: list[str] = []

    def __call__(self, event: SessionEvent) -> None:
        self.types.append(event.type_name)
        if event.ephemeral:
            if event.type_name == "assistant.message_delta":
                key = event.data.user_message_id or ""
                self.deltas.setdefault(key, []).append(event.data.delta_content or "")
        else:
            self.persisted.append([event.sequence, event.id, event.type_name])
            self.last_sequence = event.sequence
        self.changed.set()

    async def wait_for(self, predicate: Any) -> None:
        while not predicate():
            self.changed.clear()
            await self.changed.wait()


async def chatter(session_id: str, count: str, tag: str) -> None:
    """Send COUNT prompts one after another; report answers and everything observed."""
    async with CopilotClient(auto_start=False) as client:
        session = await client.resume_session(session_id)
        observer = Observer()
        session.on(observer)
        await session.attach()
        say(ready=tag, start=session.metadata.last_sequence)
        assert await command() == "go"
        mismatched = []
        for index in range(int(count)):
            prompt = f"{tag}-{index}"
            answer = await session.send_and_wait(MessageOptions(prompt, source=tag), timeout=120)
            if answer is None or f'You said: "{prompt}"' not in (answer.data.content or ""):
                mismatched.append(prompt)
        say(done=tag, mismatched=mismatched)
        target = int((await command()).split()[1])
        await observer.wait_for(lambda: observer.last_sequence >= target)
        say(observed=observer.persisted, deltas=observer.deltas)


async def sleeper(session_id: str) -> None:
    """Attach, then stop reading at the first event until told to resume."""
    async with CopilotClient(auto_start=False) as client:
        session = await client.resume_session(session_id)
        observer = Observer()
        blocked = asyncio.Event()
        resume = asyncio.Event()

        async def stall(event: SessionEvent) -> None:
            observer(event)
            if not blocked.is_set():
                blocked.set()
                say(stalled=event.sequence)
                await resume.wait()  # the reader task, and so the stream, stops here

        session.on(stall)
        await session.attach()
        say(ready="sleeper", start=session.metadata.last_sequence)
        await blocked.wait()
        assert await command() == "resume"
        resume.set()
        target = int((await command()).split()[1])
        await observer.wait_for(lambda: observer.last_sequence >= target)
        say(observed=observer.persisted)


async def raw_sleeper(session_id: str, socket_path: str) -> None:
    """Like sleeper, on the bare protocol with a small flow-control window, so the
    daemon's per-subscriber buffer is what fills; then resynchronise from the cursor."""
    import grpc

    from copilot_client.proto.v1 import copilot_pb2 as pb
    from copilot_client.proto.v1 import copilot_pb2_grpc
    from tests.support.wire import read_response

    options = [("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(f"unix:{socket_path}", options=options) as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        seen: list[list[Any]] = []
        cursor = 0
        told = ""
        call = stub.StreamEvents(pb.StreamEventsRequest(session_id=session_id))
        first = await read_response(call)
        for event in first.events:
            seen.append([event.sequence, event.id, event.type])
            cursor = event.sequence
        say(ready="raw_sleeper", live=first.live)
        assert await command() == "resume"
        target = int((await command()).split()[1])
        while cursor < target:
            try:
                while cursor < target:
                    response = await call.read()
                    if not isinstance(response, pb.StreamEventsResponse):
                        break  # grpc.aio.EOF
                    for event in response.events:
                        if not event.ephemeral:
                            seen.append([event.sequence, event.id, event.type])
                            cursor = event.sequence
            except grpc.aio.AioRpcError as error:
                told = f"{error.code().name}: {error.details()}"
            call.cancel()
            call = stub.StreamEvents(
                pb.StreamEventsRequest(session_id=session_id, after_sequence=cursor)
            )
        call.cancel()
        say(observed=seen, told=told)


async def watcher(session_id: str) -> None:
    """Attached to a session and to lifecycle events; reports what deletion looks like."""
    async with CopilotClient(auto_start=False) as client:
        session = await client.resume_session(session_id)
        observer = Observer()
        session.on(observer)
        await session.attach()
        lifecycle: list[list[str]] = []
        lifecycle_changed = asyncio.Event()

        def on_lifecycle(event: LifecycleEvent) -> None:
            lifecycle.append([event.type, event.session_id])
            lifecycle_changed.set()

        client.on_lifecycle(on_lifecycle)
        created: list[str] = []
        client.on_lifecycle("session.created", lambda e: created.append(e.session_id))
        await client.lifecycle_ready()
        say(ready="watcher")
        await observer.wait_for(lambda: "session.deleted" in observer.types)
        while ["session.deleted", session_id] not in lifecycle:
            lifecycle_changed.clear()
            await lifecycle_changed.wait()
        try:
            await session.send("anyone there?")
            outcome = "sent"
        except SessionNotFoundError as error:
            outcome = f"SessionNotFoundError: {error}"
        say(types=observer.types, lifecycle=lifecycle, created=created, send=outcome)


ROLES: dict[str, Callable[..., Coroutine[Any, Any, None]]] = {
    "chatter": chatter,
    "sleeper": sleeper,
    "raw_sleeper": raw_sleeper,
    "watcher": watcher,
}

if __name__ == "__main__":
    asyncio.run(ROLES[sys.argv[1]](*sys.argv[2:]))
