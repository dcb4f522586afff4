"""The daemon process: shutdown, crashes mid-turn, single instance, permissions, health."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import lmdb
import pytest
from grpc_health.v1 import health_pb2

from copilot_client import CopilotClient, SessionEvent, SessionEventType
from tests.support.daemon_process import DaemonProcess
from tests.support.wire import health_check


@pytest.fixture
def slow_daemon(short_tmp: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(short_tmp, ["--offline-delay", "0.3"]).start()
    yield process
    process.kill()


async def start_slow_turn(client: CopilotClient, session_id: str) -> None:
    """Create a session and return once its turn has streamed its first delta."""
    session = await client.create_session(session_id=session_id)
    first_delta = asyncio.Event()

    def on_event(event: SessionEvent) -> None:
        if event.type == SessionEventType.ASSISTANT_MESSAGE_DELTA:
            first_delta.set()

    session.on(on_event)
    await session.send("tell me a long story")
    await asyncio.wait_for(first_delta.wait(), 30)


async def history_types_and_last(
    daemon: DaemonProcess, session_id: str
) -> tuple[list[str], SessionEvent]:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.resume_session(session_id)
        events = await session.get_messages()
    return [str(e.type) for e in events], [e for e in events if e.type == "assistant.turn_end"][-1]


async def test_sigterm_mid_turn_closes_the_turn_and_exits_0(slow_daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client:
        await start_slow_turn(client, "story")
        assert slow_daemon.terminate() == 0
    assert not slow_daemon.socket_path.exists()
    assert "store closed cleanly" in "".join(slow_daemon.output)

    slow_daemon.start()
    types, turn_end = await history_types_and_last(slow_daemon, "story")
    assert types[:4] == [
        "session.start",
        "user.message",
        "assistant.turn_start",
        "assistant.message",
    ]
    assert types[4] == "assistant.turn_end"
    assert turn_end.data.reason == "interrupted"
    assert turn_end.data.message == "interrupted by daemon shutdown"
    # Text streamed before the shutdown is kept, marked partial.
    async with CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client:
        partial = next(
            e
            for e in await (await client.resume_session("story")).get_messages()
            if e.type == "assistant.message"
        )
    assert partial.data.partial is True and partial.data.content


async def test_sigkill_mid_turn_is_closed_at_next_start(slow_daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client:
        await start_slow_turn(client, "crashy")
        slow_daemon.kill()

    slow_daemon.start()
    assert "closed 1 turn(s) interrupted" in "".join(slow_daemon.output)
    types, turn_end = await history_types_and_last(slow_daemon, "crashy")
    assert types[:4] == [
        "session.start",
        "user.message",
        "assistant.turn_start",
        "assistant.turn_end",
    ]
    assert turn_end.data.reason == "interrupted"
    assert turn_end.data.message == "interrupted by daemon restart"
    async with CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client:
        session = await client.resume_session("crashy")
        answer = await session.send_and_wait("are you back?", timeout=30)
        assert answer is not None and "are you back?" in (answer.data.content or "")
        metadata = await client.get_session_metadata("crashy")
        assert metadata is not None and not metadata.turn_running


async def test_acknowledged_writes_survive_sigkill(daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        sessions = [await client.create_session(session_id=f"s{i}") for i in range(20)]
        message_ids = await asyncio.gather(*(s.send(f"prompt {i}") for i, s in enumerate(sessions)))
    daemon.kill()
    daemon.start()
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        for index, message_id in enumerate(message_ids):
            events = await (await client.resume_session(f"s{index}")).get_messages()
            users = [e for e in events if e.type == "user.message"]
            assert [(u.id, u.data.content) for u in users] == [(message_id, f"prompt {index}")]
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            # Every started turn has an end, whatever moment the kill hit.
            starts = sum(e.type == "assistant.turn_start" for e in events)
            ends = sum(e.type == "assistant.turn_end" for e in events)
            assert starts == ends == 1


async def test_health_service(daemon: DaemonProcess) -> None:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        for service in ("", "copilot.v1.CopilotService"):
            reply = await health_check(channel, service)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_private_permissions(daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(daemon.socket_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(daemon.socket_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.data_dir.stat().st_mode) == 0o700


def run_second_daemon(socket_path: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    process = DaemonProcess(socket_path.parent)
    command = process.command()
    command[command.index("--socket") + 1] = str(socket_path)
    command[command.index("--data-dir") + 1] = str(data_dir)
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_second_daemon_on_same_data_dir_refuses(daemon: DaemonProcess, short_tmp: Path) -> None:
    result = run_second_daemon(short_tmp / "other" / "s.sock", daemon.data_dir)
    assert result.returncode == 1
    assert "already using the data directory" in result.stderr
    assert f"pid {daemon.process.pid}" in result.stderr  # type: ignore[union-attr]


def test_second_daemon_on_same_socket_refuses(daemon: DaemonProcess, short_tmp: Path) -> None:
    result = run_second_daemon(daemon.socket_path, short_tmp / "other-data")
    assert result.returncode == 1
    assert "already using the socket" in result.stderr
    assert daemon.socket_path.exists()  # the live daemon's socket is left alone


def test_stale_socket_is_replaced(daemon: DaemonProcess) -> None:
    daemon.kill()
    assert daemon.socket_path.exists()  # SIGKILL leaves the socket file behind
    daemon.start()
    assert stat.S_ISSOCK(daemon.socket_path.stat().st_mode)


def test_store_from_newer_version_is_refused(short_tmp: Path) -> None:
    daemon = DaemonProcess(short_tmp).start()
    daemon.terminate()
    store_dir = daemon.data_dir / "store"
    env = lmdb.open(str(store_dir), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", b"999", db=env.open_db(b"sys", txn=txn))
    env.close()
    before = (store_dir / "data.mdb").read_bytes()

    result = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert "schema version 999" in result.stderr and "Upgrade copilotd" in result.stderr
    assert (store_dir / "data.mdb").read_bytes() == before


def test_socket_path_too_long_is_refused(short_tmp: Path) -> None:
    long_socket = short_tmp / ("x" * 110) / "s.sock"
    result = run_second_daemon(long_socket, short_tmp / "data")
    assert result.returncode == 1
    assert "longer than 107 bytes" in result.stderr
    assert not os.path.exists(long_socket.parent)


async def test_queued_messages_survive_sigkill(slow_daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client:
        await start_slow_turn(client, "queue")
        session = await client.resume_session("queue")
        waiting = [await session.send(f"queued {i}") for i in range(2)]
        metadata = await client.get_session_metadata("queue")
        assert metadata is not None and metadata.pending_messages == 2
        slow_daemon.kill()

    slow_daemon.start()
    async with CopilotClient(socket_path=slow_daemon.socket_path, auto_start=False) as client:
        session = await client.resume_session("queue")
        done = asyncio.Event()

        def on_event(event: SessionEvent) -> None:
            if event.type == "assistant.turn_end" and event.data.user_message_id == waiting[-1]:
                done.set()

        session.on(on_event)
        await session.attach()
        if not any(
            e.type == "assistant.turn_end" and e.data.user_message_id == waiting[-1]
            for e in await session.get_messages()
        ):
            await asyncio.wait_for(done.wait(), 60)
        events = await session.get_messages()
    users = [(e.id, e.data.content) for e in events if e.type == "user.message"]
    assert users[1:] == [(waiting[0], "queued 0"), (waiting[1], "queued 1")]
    reasons = [e.data.reason for e in events if e.type == "assistant.turn_end"]
    assert reasons == ["interrupted", "completed", "completed"]
