"""How an auto-starting client waits for the daemon it launched.

It waits until something listens on the socket (not merely until the file
exists: a SIGKILLed daemon leaves its file behind), then connects on a new
channel, so grpc's reconnect backoff adds nothing to the start. The daemon
makes its socket private from the moment it binds it, because the client
checks the socket's owner and mode as soon as it connects.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import copilotd
from copilot_client import CopilotClient
from copilot_client._autostart import wait_listening
from copilotd.runtime.server import private_umask
from tests.support.autostart import kill_auto_started, lock_pid
from tests.support.daemon_process import DaemonProcess

# How long a wait that must not end is given to end wrongly.
NOT_ENDED_WITHIN = 0.3


@pytest.fixture
def killed_daemon(short_tmp: Path) -> Iterator[DaemonProcess]:
    """A daemon that was SIGKILLed: its socket file is still there, nothing serves it."""
    daemon = DaemonProcess(short_tmp).start()
    daemon.kill()
    yield daemon
    kill_auto_started(daemon.socket_path, daemon.data_dir)


async def test_auto_start_after_a_killed_daemon_serves_again(
    killed_daemon: DaemonProcess,
) -> None:
    assert stat.S_ISSOCK(os.lstat(killed_daemon.socket_path).st_mode)
    async with CopilotClient(
        socket_path=killed_daemon.socket_path, data_dir=killed_daemon.data_dir
    ) as client:
        assert await client.ping() == copilotd.__version__
        session = await client.create_session(session_id="after-kill")
        answer = await session.send_and_wait("hello", timeout=30)
        assert answer is not None and answer.data.content
        assert 'You said: "hello"' in answer.data.content
    assert killed_daemon.process is not None
    assert lock_pid(killed_daemon.data_dir) != killed_daemon.process.pid


async def test_wait_listening_waits_past_a_socket_file_nothing_listens_on(
    short_tmp: Path,
) -> None:
    path = short_tmp / "left.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left_behind:
        left_behind.bind(str(path))  # the file exists; connecting is refused
        waiting = asyncio.ensure_future(wait_listening(path))
        done, _ = await asyncio.wait({waiting}, timeout=NOT_ENDED_WITHIN)
        assert not done, "wait_listening ended although nothing listens on the socket"
        left_behind.listen()
        assert await waiting is True


async def test_wait_listening_waits_for_the_file(short_tmp: Path) -> None:
    path = short_tmp / "later.sock"
    waiting = asyncio.ensure_future(wait_listening(path))
    done, _ = await asyncio.wait({waiting}, timeout=NOT_ENDED_WITHIN)
    assert not done
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        assert await waiting is True


def test_files_made_under_the_private_umask_are_private(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        with private_umask():
            (tmp_path / "inside").touch(mode=0o666)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
                bound.bind(str(tmp_path / "inside.sock"))
        assert os.umask(0o022) == 0o022  # restored
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "inside").stat().st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(tmp_path / "inside.sock").st_mode) == 0o600
