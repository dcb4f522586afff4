"""Many apps, one session: real client processes sharing sessions through one daemon."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from copilot_client import CopilotClient, MessageOptions, SessionEvent
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from tests.support.daemon_process import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
TURN = ["user.message", "assistant.turn_start", "assistant.message", "assistant.turn_end"]


class Worker:
    """A client process (tests/support/clients/sharing_worker.py) driven line by line."""

    def __init__(self, daemon: DaemonProcess, role: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.clients.sharing_worker", role, *args],
            cwd=ROOT,
            env=daemon.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"worker exited with {self.process.wait()}"
        return json.loads(line)  # type: ignore[no-any-return]

    async def aread(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.read)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


def history(daemon: DaemonProcess, session_id: str) -> list[SessionEvent]:
    async def read() -> list[SessionEvent]:
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            return await (await client.resume_session(session_id)).get_messages()

    return asyncio.run(read())


def check_chain(events: list[SessionEvent]) -> None:
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    for previous, event in itertools.pairwise(events):
        assert event.parent_id == previous.id


def turn_blocks(events: list[SessionEvent]) -> list[list[SessionEvent]]:
    """Each user.message with the events after it up to its turn_end."""
    blocks = []
    for index, event in enumerate(events):
        if event.type == "user.message":
            blocks.append(events[index : index + 4])
    return blocks


async def create(daemon: DaemonProcess, session_id: str) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        await client.create_session(session_id=session_id)


def test_eight_processes_twenty_five_messages_each(
    daemon: DaemonProcess, workers: list[Worker]
) -> None:
    asyncio.run(create(daemon, "shared"))
    tags = [f"p{index}" for index in range(8)]
    workers.extend(Worker(daemon, "chatter", "shared", "25", tag) for tag in tags)
    starts = {w.read()["ready"]: None for w in workers}
    assert set(starts) == set(tags)
    for worker in workers:
        worker.send("go")
    results = [worker.read() for worker in workers]
    assert all(r["mismatched"] == [] for r in results), results  # each got its own answer

    events = history(daemon, "shared")
    check_chain(events)
    for worker in workers:
        worker.send(f"finish {events[-1].sequence}")
    observed = [worker.read() for worker in workers]

    users = [e for e in events if e.type == "user.message"]
    prompts = sorted(e.data.content or "" for e in users)
    assert prompts == sorted(f"{tag}-{i}" for tag in tags for i in range(25))
    blocks = turn_blocks(events)
    assert len(blocks) == 200
    for block in blocks:  # every turn's events are contiguous
        assert [e.type for e in block] == TURN
        assert {e.data.user_message_id for e in block[1:]} == {block[0].id}
        assert f'You said: "{block[0].data.content}"' in (block[2].data.content or "")

    by_sequence = {e.sequence: [e.sequence, e.id, e.type_name] for e in events}
    for report in observed:
        seen = report["observed"]
        first = seen[0][0]
        # What each process saw is exactly the log from where it attached: same order,
        # nothing lost, nothing twice.
        assert seen == [by_sequence[s] for s in range(first, events[-1].sequence + 1)]
        for block in blocks:
            pieces = report["deltas"].get(block[0].id)
            if pieces is not None and block[0].sequence > first:
                assert "".join(pieces) == block[2].data.content


def test_slow_subscribers_neither_block_nor_lose_events(
    short_tmp: Path, workers: list[Worker]
) -> None:
    """Two subscribers stop reading while 5,000+ events flow: one through the client
    library, one on the bare protocol whose daemon-side buffer (500 events) overflows."""
    daemon = DaemonProcess(short_tmp, ["--subscriber-buffer", "500"]).start()
    try:
        asyncio.run(create(daemon, "firehose"))
        sleeper = Worker(daemon, "sleeper", "firehose")
        raw = Worker(daemon, "raw_sleeper", "firehose", str(daemon.socket_path))
        workers.extend([sleeper, raw])
        assert sleeper.read()["ready"] == "sleeper"
        assert raw.read() == {"ready": "raw_sleeper", "live": True}

        async def flood() -> tuple[int, int]:
            async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
                session = await client.resume_session("firehose")
                seen: list[SessionEvent] = []
                session.on(seen.append)
                await session.attach()
                await session.send("wake the sleeper")
                assert "stalled" in await sleeper.aread()
                # With both sleepers not reading, the turns complete and the
                # attentive subscriber gets everything.
                turns = 0
                while len(seen) < 5_000:
                    answer = await session.send_and_wait(f"flood {turns}", timeout=60)
                    assert answer is not None
                    turns += 1
                return len(seen), turns

        delivered, turns = asyncio.run(flood())
        assert delivered >= 5_000 and turns > 400
        events = history(daemon, "firehose")
        expected = [[e.sequence, e.id, e.type_name] for e in events]
        for worker in (sleeper, raw):
            worker.send("resume")
            worker.send(f"finish {events[-1].sequence}")
        from_client = sleeper.read()["observed"]
        assert from_client == expected[from_client[0][0] - 1 :]  # each event exactly once
        report = raw.read()
        assert report["observed"] == expected  # resynchronised from its cursor, no gap or twin
        assert report["told"].startswith("RESOURCE_EXHAUSTED: this subscriber fell more than 500")
        assert "fell more than 500 events behind" in "".join(daemon.output)
    finally:
        daemon.kill()


async def test_reattach_mid_turn_from_cursor_misses_nothing(short_tmp: Path) -> None:
    daemon = DaemonProcess(short_tmp, ["--offline-delay", "0.1"]).start()
    try:
        await create(daemon, "flaky")
        async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
            stub = copilot_pb2_grpc.CopilotServiceStub(channel)
            first = stub.StreamEvents(pb.StreamEventsRequest(session_id="flaky"))
            received: list[Any] = []
            await stub.SendMessage(pb.SendMessageRequest(session_id="flaky", prompt="stream it"))
            async for response in first:
                received.extend(response.events)
                if any(e.type == "assistant.message_delta" for e in response.events):
                    break
            first.cancel()  # the client disconnects in the middle of the turn
            cursor = max(e.sequence for e in received if not e.ephemeral)
            second = stub.StreamEvents(
                pb.StreamEventsRequest(session_id="flaky", after_sequence=cursor)
            )
            async for response in second:
                received.extend(response.events)
                if any(e.type == "assistant.turn_end" for e in response.events):
                    break
            second.cancel()
        persisted = [e for e in received if not e.ephemeral]
        stored = await asyncio.to_thread(history, daemon, "flaky")
        assert [(e.sequence, e.id) for e in persisted] == [
            (e.sequence, e.id) for e in stored[: len(persisted)]
        ]
        assert [e.type for e in persisted] == ["session.start", *TURN]
    finally:
        daemon.kill()


async def test_delete_is_seen_by_an_attached_client_in_another_process(
    daemon: DaemonProcess, workers: list[Worker]
) -> None:
    await create(daemon, "doomed")
    watcher = Worker(daemon, "watcher", "doomed")
    workers.append(watcher)
    assert (await watcher.aread())["ready"] == "watcher"
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        await client.create_session(session_id="newcomer")
        await client.delete_session("doomed")
    report = await watcher.aread()
    assert report["types"][-1] == "session.deleted"  # the terminal event
    assert report["send"].startswith("SessionNotFoundError")
    assert ["session.created", "newcomer"] in report["lifecycle"]
    assert report["lifecycle"].index(["session.created", "newcomer"]) < report["lifecycle"].index(
        ["session.deleted", "doomed"]
    )
    assert report["created"] == ["newcomer"]


async def test_resume_in_use_immediate_mode_and_abort_from_anywhere(short_tmp: Path) -> None:
    daemon = DaemonProcess(short_tmp, ["--offline-delay", "0.2"]).start()
    try:
        async with (
            CopilotClient(socket_path=daemon.socket_path, auto_start=False) as alice,
            CopilotClient(socket_path=daemon.socket_path, auto_start=False) as bob,
        ):
            mine = await alice.create_session(session_id="together")
            seen: list[SessionEvent] = []
            delta = asyncio.Event()
            queue_changes: list[tuple[str, ...]] = []

            def record(event: SessionEvent) -> None:
                seen.append(event)
                if event.type == "assistant.message_delta":
                    delta.set()
                if event.type == "pending_messages.modified":
                    queue_changes.append(event.data.message_ids or ())

            mine.on(record)
            await mine.attach()
            running = asyncio.create_task(mine.send_and_wait("long story", timeout=60))
            await delta.wait()

            theirs = await bob.resume_session("together")
            resumed = [e for e in await theirs.get_messages() if e.type == "session.resume"][-1]
            assert resumed.data.already_in_use is True and resumed.data.turn_running is True

            queued = await mine.send("after the story")
            jumped = await theirs.send(MessageOptions("right now", mode="immediate"))
            story = await running  # aborted by bob's immediate message: partial text kept
            assert story is not None and story.data.partial is True
            assert queue_changes[-1] == (jumped, queued)

            now = await theirs.send_and_wait(MessageOptions("and then"), timeout=60)
            assert now is not None
            # Abort from anywhere: alice stops the turn bob started.
            slow = asyncio.create_task(theirs.send_and_wait("another long one", timeout=60))
            delta.clear()
            await delta.wait()
            assert await mine.abort("alice says stop")
            await slow
        events = await asyncio.to_thread(history, daemon, "together")
        check_chain(events)
        contents = [e.data.content for e in events if e.type == "user.message"]
        assert contents == [
            "long story",
            "right now",
            "after the story",
            "and then",
            "another long one",
        ]
        ends = [e.data for e in events if e.type == "assistant.turn_end"]
        assert [d.reason for d in ends] == [
            "aborted",
            "completed",
            "completed",
            "completed",
            "aborted",
        ]
        assert "mode=immediate" in (ends[0].message or "")
        assert ends[-1].message == "alice says stop"
    finally:
        daemon.kill()
