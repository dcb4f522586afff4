"""copilot_client starting the real daemon by itself: racing clients, failures.

A client with ``auto_start`` (the default) launches ``copilotd serve`` fully
detached when nothing answers on its socket; these tests watch the real
processes through /proc.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import copilotd
from copilot_client import (
    CopilotClient,
    DaemonUnavailableError,
)
from tests.support.autostart import (
    daemons_serving,
    kill_auto_started,
    lock_pid,
    parent_pid,
    wait_gone,
)

ROOT = Path(__file__).resolve().parent.parent


# -- auto-start with the real daemon -----------------------------------------

CLIENT_SCRIPT = """
import asyncio, sys
from copilot_client import CopilotClient

async def main():
    async with CopilotClient(socket_path=sys.argv[1], data_dir=sys.argv[2]) as client:
        print(await client.ping())

asyncio.run(main())
"""


@pytest.fixture
def fresh_paths(short_tmp: Path) -> Iterator[tuple[Path, Path]]:
    """A socket and data dir nobody serves yet; auto-started daemons are killed afterwards."""
    socket_path, data_dir = short_tmp / "run" / "copilotd.sock", short_tmp / "data"
    yield socket_path, data_dir
    kill_auto_started(socket_path, data_dir)


async def test_racing_clients_auto_start_one_detached_daemon(
    fresh_paths: tuple[Path, Path],
) -> None:
    socket_path, data_dir = fresh_paths
    assert daemons_serving(socket_path) == []
    others = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENT_SCRIPT,
            str(socket_path),
            str(data_dir),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    clients = [CopilotClient(socket_path=socket_path, data_dir=data_dir) for _ in range(3)]
    try:
        versions = await asyncio.gather(*(c.ping() for c in clients))
        outputs = await asyncio.gather(*(p.communicate() for p in others))
        for process, (stdout, stderr) in zip(others, outputs, strict=True):
            assert process.returncode == 0, stderr.decode()
            versions.append(stdout.decode().strip())
        assert versions == [copilotd.__version__] * 5

        # Every client has returned, so every daemon any of them launched
        # exists by now; the ones that lost the race are exiting.
        winner = lock_pid(data_dir)
        for pid in daemons_serving(socket_path):
            if pid != winner:
                wait_gone(pid)
        assert daemons_serving(socket_path) == [winner]
        assert parent_pid(winner) != os.getpid()  # detached: not our child
        # In a session of its own: a Ctrl-C (or hang-up) meant for the clients misses it.
        assert os.getsid(winner) == winner
        assert (data_dir.stat().st_mode & 0o777) == 0o700
        assert ((data_dir / "copilotd.log").stat().st_mode & 0o777) == 0o600
        log = (data_dir / "copilotd.log").read_text()
        refusals = [line for line in log.splitlines() if "cannot start" in line]
        # The three in-process clients all launched a daemon: at least two
        # lost, exited, and their clients waited for the winner instead of failing.
        assert len(refusals) >= 2
        assert all("is already using" in line for line in refusals)

        for client in clients:
            await client.stop()  # never stops the daemon
        async with CopilotClient(socket_path=socket_path, auto_start=False) as client:
            assert await client.ping() == copilotd.__version__
        assert daemons_serving(socket_path) == [winner]
    finally:
        for client in clients:
            await client.stop()
        for process in others:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_auto_start_failure_reports_the_daemons_error(
    fresh_paths: tuple[Path, Path],
) -> None:
    socket_path, data_dir = fresh_paths
    store = data_dir / "store"
    store.mkdir(parents=True)
    garbage = bytes(range(256)) * 64
    (store / "data.mdb").write_bytes(garbage)
    client = CopilotClient(socket_path=socket_path, data_dir=data_dir, start_timeout=10)
    with pytest.raises(DaemonUnavailableError) as caught:
        await client.start()
    message = str(caught.value)
    assert caught.value.socket_path == str(socket_path)
    assert str(socket_path) in message
    assert str(data_dir / "copilotd.log") in message
    assert "copilotd: cannot start:" in message
    assert "is not an LMDB environment" in message
    # Noticed because the daemon exited, not because the start timeout ran out.
    assert "exited without serving" in message
    assert daemons_serving(socket_path) == []
    assert (store / "data.mdb").read_bytes() == garbage  # left untouched
    await client.stop()


async def test_auto_start_with_a_missing_command(fresh_paths: tuple[Path, Path]) -> None:
    socket_path, data_dir = fresh_paths
    missing = str(data_dir.parent / "no-such-copilotd")
    client = CopilotClient(socket_path=socket_path, data_dir=data_dir, daemon_command=[missing])
    with pytest.raises(DaemonUnavailableError, match="auto-start failed") as caught:
        await client.ping()
    assert missing in str(caught.value)
    assert "No such file or directory" in str(caught.value)
    await client.stop()


def test_the_launcher_imports_nothing_but_its_interpreter(tmp_path: Path) -> None:
    # An auto-start waits for the launcher: importing subprocess there cost
    # more than the interpreter's own start (docs/benchmarks.md).
    from copilot_client._autostart import _LAUNCHER

    log = tmp_path / "log"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", "-c", _LAUNCHER, str(log), "true"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip().isdigit()  # the spawned pid
    lines = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if "|" in line}
    assert "os" in imported or "posix" in imported  # the record is read right
    assert not imported & {"subprocess", "threading", "selectors", "signal"}


STRACE = shutil.which("strace")
# "1234 connect(5, {sa_family=AF_UNIX, sun_path="/x/copilotd.sock"}, 110) = -1 ENOENT ..."
CONNECT = re.compile(
    r'^(?P<tid>\d+) +connect\(\d+, \{sa_family=AF_UNIX, sun_path="(?P<path>[^"]+)"'
)
LAUNCHER_EXEC = re.compile(r'^\d+ +execve\(.*"-I", "-S"')


@pytest.mark.skipif(STRACE is None, reason="needs strace (apt-get install strace)")
def test_nothing_listening_launches_without_a_grpc_call_first(
    fresh_paths: tuple[Path, Path],
) -> None:
    # A gRPC call to a socket nothing serves only fails after grpc's own
    # connection attempt (from its poller thread): the client launches as soon
    # as its own plain connect() (from the thread that runs the event loop) is refused.
    assert STRACE is not None
    socket_path, data_dir = fresh_paths
    trace = socket_path.parent.parent / "trace"
    command = [sys.executable, "-c", CLIENT_SCRIPT, str(socket_path), str(data_dir)]
    traced = subprocess.Popen(
        [STRACE, "-f", "-qq", "-e", "trace=connect,execve", "-o", str(trace), *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert traced.stdout is not None
        assert traced.stdout.readline().strip() == copilotd.__version__
    finally:
        kill_auto_started(socket_path, data_dir)  # strace follows the daemon too
        traced.wait(60)
    lines = trace.read_text().splitlines()
    client = int(lines[0].split()[0])  # the first call traced is the client's execve
    launched = next(n for n, line in enumerate(lines) if LAUNCHER_EXEC.match(line))
    before = [m for line in lines[:launched] if (m := CONNECT.match(line))]
    attempts = [int(m["tid"]) for m in before if m["path"] == str(socket_path)]
    assert attempts == [client]


# '1234 openat(AT_FDCWD, "/x/site-packages/grpc/__pycache__/__init__.cpython-311.pyc", ...'
OPENED = re.compile(r'^\d+ +openat\(AT_FDCWD, "(?P<path>[^"]+)"')
GRPC_MACHINERY = re.compile(
    r"/grpc/|/google/protobuf/|_pb2(_grpc)?\.|/copilot_client/(__pycache__/)?_session\."
)


@pytest.mark.skipif(STRACE is None, reason="needs strace (apt-get install strace)")
def test_the_client_launches_the_daemon_before_importing_grpc(
    fresh_paths: tuple[Path, Path],
) -> None:
    # The daemon's start then overlaps the client's imports of grpc, protobuf
    # and its own machinery, instead of following them (docs/benchmarks.md).
    assert STRACE is not None
    socket_path, data_dir = fresh_paths
    trace = socket_path.parent.parent / "trace"
    command = [sys.executable, "-c", CLIENT_SCRIPT, str(socket_path), str(data_dir)]
    traced = subprocess.Popen(
        [STRACE, "-f", "-qq", "-e", "trace=openat,execve", "-o", str(trace), *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert traced.stdout is not None
        assert traced.stdout.readline().strip() == copilotd.__version__
    finally:
        kill_auto_started(socket_path, data_dir)
        traced.wait(60)
    lines = trace.read_text().splitlines()
    client = lines[0].split()[0]  # the first call traced is the client's execve
    launched = next(n for n, line in enumerate(lines) if LAUNCHER_EXEC.match(line))
    opened = [
        (n, m["path"])
        for n, line in enumerate(lines)
        if line.split()[0] == client and (m := OPENED.match(line))
    ]
    assert any("/copilot_client/" in path for n, path in opened if n < launched)
    early = [path for n, path in opened if n < launched and GRPC_MACHINERY.search(path)]
    assert early == []
    assert any(GRPC_MACHINERY.search(path) for n, path in opened if n > launched)
