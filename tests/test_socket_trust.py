"""The client trusts only a socket that is its user's alone; the daemon never
serves through a symbolic link.

Without ``$XDG_RUNTIME_DIR`` the default socket folder is
``$TMPDIR/copilotd-$UID``, in a folder every user may write to. These tests
let a second real local user (created when the suite runs as root, skipped
otherwise) get there first and serve a fake daemon, which records every
connection and every byte it receives: the client must refuse before a byte
of a request reaches it, and must not auto-start a daemon of its own there.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from copilot_client import CopilotClient, UntrustedSocketError
from copilot_client.paths import SOCKET_NAME, default_runtime_dir
from tests.support.cli import copilotd, one_line_error
from tests.support.daemon_process import DaemonProcess
from tests.support.privileged import python_for

# A fake daemon: listens on argv[1] (creating its folder, open to all), prints
# "ready", then one line per connection with the bytes it received, until a
# connection sends "END".
FAKE_DAEMON = """
import os, socket, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
server = socket.socket(socket.AF_UNIX)
server.bind(path)
os.chmod(path, 0o777)
server.listen()
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
        if received == b"END":
            sys.exit()
    print("connection", len(received), flush=True)
    conn.close()
"""


class FakeDaemon:
    """The fake daemon, run as ``user``."""

    def __init__(self, user: str, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.process = subprocess.Popen(
            [python_for(user), "-c", FAKE_DAEMON, str(socket_path)],
            user=user,
            cwd="/",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line == "ready\n", line + self.process.communicate()[1]

    def connections(self, at: Path | None = None) -> list[str]:
        """What it saw, once it has handled every earlier connection (they queue in order)."""
        with socket.socket(socket.AF_UNIX) as last:
            last.connect(str(at or self.socket_path))
            last.sendall(b"END")
            stdout, stderr = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, stderr
        return stdout.splitlines()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp dir like /tmp: every user may create entries there (mode 1777)."""
    path = Path(tempfile.mkdtemp(prefix="cpd", dir="/tmp"))
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def default_socket_in(
    shared_tmp: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Make the client's default socket the temp-dir fallback, under ``shared_tmp``."""
    # pytest finds its own temp root through tempfile too: fix it before the patch.
    tmp_path_factory.getbasetemp()
    for name in ("XDG_RUNTIME_DIR", "COPILOTD_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TMPDIR", str(shared_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    socket_path = default_runtime_dir() / SOCKET_NAME
    assert socket_path.parent.parent == shared_tmp
    return socket_path


async def test_a_folder_another_user_created_first_is_refused(
    default_socket_in: Path,
    stranger: str,
    short_tmp: Path,
) -> None:
    fake = FakeDaemon(stranger, default_socket_in)
    try:
        data_dir = short_tmp / "data"
        client = CopilotClient(data_dir=data_dir)  # auto_start on
        with pytest.raises(UntrustedSocketError) as refused:
            await client.start()
        message = str(refused.value)
        assert str(default_socket_in.parent) in message
        assert stranger in message and "not to you" in message
        assert refused.value.socket_path == str(default_socket_in)
        assert not data_dir.exists(), "the client auto-started a daemon there"

        cli = one_line_error(
            copilotd(
                None,
                "sessions",
                "list",
                env={**os.environ, "TMPDIR": str(default_socket_in.parent.parent)},
            )
        )
        assert "refusing to use the copilotd socket" in cli and stranger in cli
        assert fake.connections() == [], "something connected to the other user's socket"
    finally:
        fake.kill()


async def test_a_private_looking_socket_served_by_another_user_is_refused(
    shared_tmp: Path,
    stranger: str,
) -> None:
    """Folder and socket are ours and private, but another user's process listens:
    only the peer's credentials (SO_PEERCRED) tell."""
    theirs = shared_tmp / "theirs" / SOCKET_NAME
    fake = FakeDaemon(stranger, theirs)
    ours = shared_tmp / "ours"
    ours.mkdir(mode=0o700)
    planted = ours / SOCKET_NAME
    try:
        # A bound socket keeps serving under its new name.
        os.rename(theirs, planted)
        os.chown(planted, os.getuid(), os.getgid())
        os.chmod(planted, 0o600)
        client = CopilotClient(socket_path=planted, auto_start=False)
        with pytest.raises(UntrustedSocketError) as refused:
            await client.start()
        assert f"runs as uid {_uid(stranger)} ({stranger})" in str(refused.value)
        # One probe connection, closed without a byte of a request.
        assert fake.connections(at=planted) == ["connection 0"]
    finally:
        fake.kill()


def test_a_symlinked_default_folder_is_refused(
    default_socket_in: Path,
    stranger: str,
) -> None:
    theirs = default_socket_in.parent.parent / "theirs"
    fake = FakeDaemon(stranger, theirs / SOCKET_NAME)
    try:
        subprocess.run(
            ["ln", "-s", str(theirs), str(default_socket_in.parent)], user=stranger, check=True
        )
        line = one_line_error(
            copilotd(
                None, "status", env={**os.environ, "TMPDIR": str(default_socket_in.parent.parent)}
            )
        )
        assert f"its folder {default_socket_in.parent} is a symbolic link" in line
        assert fake.connections() == []
    finally:
        fake.kill()


def test_the_daemon_refuses_a_symlinked_socket_folder_and_leaves_its_target(
    short_tmp: Path,
) -> None:
    target = short_tmp / "elsewhere"
    target.mkdir()
    os.chmod(target, 0o755)
    link = short_tmp / "run"
    link.symlink_to(target)
    daemon = DaemonProcess(short_tmp)  # its socket is short_tmp/run/copilotd.sock
    result = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"copilotd: cannot start: {link} is a symbolic link (to {target}); copilotd does not "
        "serve through one: remove it, or pass the real folder with --socket"
    )
    assert stat.S_IMODE(target.stat().st_mode) == 0o755, "the daemon chmodded the link's target"
    assert list(target.iterdir()) == []


async def test_our_own_daemon_is_trusted(daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        assert await client.list_sessions() is not None


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid
