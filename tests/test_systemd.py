"""copilotd under systemd: the units, readiness and watchdog notifications, socket activation.

The notification and activation protocols are exercised for real: the tests
play systemd's part (a datagram socket for ``NOTIFY_SOCKET``, a listening
socket passed as fd 3 with ``LISTEN_FDS``/``LISTEN_PID``), and when
systemd's own ``systemd-socket-activate`` and ``systemd-analyze`` are
installed they are used too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from copilot_client import CopilotClient
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from tests.support.autostart import daemons_serving
from tests.support.cli import copilotd, ok, one_line_error
from tests.support.daemon_process import DaemonProcess
from tests.support.wire import health_check

RECEIVE_TIMEOUT = 30.0
# XDG_CONFIG_HOME: the test session's own, so the daemon never reads the developer's config.
PASSED_ENV = ("HOME", "PATH", "PYTHONDONTWRITEBYTECODE", "XDG_CONFIG_HOME")
CALL_TIMEOUT = 60.0


class NotifySocket:
    """systemd's end of sd_notify: a datagram socket the daemon reports to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(RECEIVE_TIMEOUT)

    def fill(self) -> int:
        """Fill the receive queue, so that the daemon's next notification waits for us."""
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        filler.connect(str(self.path))
        filler.setblocking(False)
        sent = 0
        try:
            while True:
                filler.send(b"FILLER")
                sent += 1
        except BlockingIOError:
            return sent
        finally:
            filler.close()

    def receive_until(self, wanted: str) -> dict[str, str]:
        """Messages until one that has ``wanted`` (e.g. ``READY=1``); that one's assignments."""
        while True:
            message = self.sock.recv(4096).decode()
            if message == "FILLER":
                continue
            fields = dict(line.split("=", 1) for line in message.splitlines())
            if wanted in message.splitlines():
                return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(short_tmp: Path) -> Iterator[NotifySocket]:
    notify = NotifySocket(short_tmp / "notify")
    yield notify
    notify.close()


def accepts_connections(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


async def ping(socket_path: Path) -> str:
    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        response = await stub.Ping(pb.PingRequest(), timeout=CALL_TIMEOUT, wait_for_ready=True)
        return response.version


# -- sd_notify and the watchdog ------------------------------------------------------------


async def test_ready_only_once_serving_then_watchdog_then_stopping(
    short_tmp: Path, notify_socket: NotifySocket
) -> None:
    # With the notify queue full, the daemon's READY=1 cannot arrive before we
    # drain it: whatever the socket does until then, it did before READY.
    assert notify_socket.fill() > 0
    daemon = DaemonProcess(
        short_tmp,
        extra_env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"},
    ).start()
    try:
        assert accepts_connections(daemon.socket_path)
        ready = notify_socket.receive_until("READY=1")
        assert ready["STATUS"] == f"serving on unix:{daemon.socket_path}"
        assert await ping(daemon.socket_path)
        async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
            health = await health_check(channel, "copilot.v1.CopilotService")
            assert health.status == health_pb2.HealthCheckResponse.SERVING

        notify_socket.receive_until("WATCHDOG=1")  # WATCHDOG_USEC set: pings come
        notify_socket.receive_until("WATCHDOG=1")

        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert notify_socket.receive_until("STOPPING=1")
        assert daemon.process.wait(30) == 0
    finally:
        daemon.kill()


def test_no_watchdog_pings_without_watchdog_usec(
    short_tmp: Path, notify_socket: NotifySocket
) -> None:
    daemon = DaemonProcess(short_tmp, extra_env={"NOTIFY_SOCKET": str(notify_socket.path)}).start()
    try:
        notify_socket.receive_until("READY=1")
        assert daemon.terminate() == 0
        stopping = notify_socket.sock.recv(4096).decode()
        assert "STOPPING=1" in stopping.splitlines()  # the next message: no WATCHDOG=1 between
    finally:
        daemon.kill()


# -- socket activation ---------------------------------------------------------------------

# Plays systemd: moves the passed socket to fd 3, names this process in
# LISTEN_PID (known only after the fork), and runs the daemon in its place.
_ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class ActivatedDaemon(DaemonProcess):
    """A daemon started the way systemd starts it for a .socket unit."""

    def __init__(self, root: Path, listener: socket.socket, **options: Any) -> None:
        super().__init__(root, **options)
        self.listener = listener
        if listener.getsockname():
            self.socket_path = Path(listener.getsockname())

    def command(self) -> list[str]:
        daemon = super().command()
        return [sys.executable, "-c", _ACTIVATE, str(self.listener.fileno()), *daemon[1:]]

    def popen_options(self) -> dict[str, Any]:
        return {"pass_fds": (self.listener.fileno(),)}


def listening_socket(path: Path) -> socket.socket:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)  # SocketMode=0600, as in copilotd.socket: clients refuse looser
    listener.listen(16)
    return listener


async def test_a_passed_socket_is_served_and_stays_for_the_next_start(short_tmp: Path) -> None:
    listener = listening_socket(short_tmp / "sd" / "copilotd.sock")
    daemon = ActivatedDaemon(short_tmp, listener).start()
    try:
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            session = await client.create_session(session_id="through-systemd")
            answer = await session.send_and_wait("hello via the relay")  # a stream, too
            assert answer is not None and "hello via the relay" in (answer.data.content or "")
        status = json.loads(ok(copilotd(daemon, "status", "--json")))
        assert status["socket_activated"] is True
        assert status["socket"] == str(daemon.socket_path)
        private = daemon.socket_path.with_name("copilotd.sock.grpc")
        assert private.stat().st_mode & 0o777 == 0o600

        assert daemon.terminate() == 0
        assert daemon.socket_path.exists()  # systemd's socket is left alone ...
        assert not private.exists()
        # ... and still listens: a client connecting now waits in its queue
        # until the next daemon (systemd would start it on this connection).
        waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        waiting.connect(str(daemon.socket_path))
        waiting.close()

        daemon.start()
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            assert [m.session_id for m in await client.list_sessions()] == ["through-systemd"]
    finally:
        daemon.kill()
        listener.close()


def test_a_passed_socket_that_does_not_listen_is_refused(short_tmp: Path) -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    daemon = ActivatedDaemon(short_tmp, left)
    try:
        with pytest.raises(RuntimeError, match="did not start"):
            daemon.start()
        assert daemon.process is not None and daemon.process.wait(30) == 1
        assert (
            "cannot start: the socket systemd passed is not a listening Unix stream socket"
            in "".join(daemon.output)
        )
    finally:
        left.close()
        right.close()


def start_activator(command: list[str]) -> subprocess.Popen[str]:
    """Start ``systemd-socket-activate``; returns once it listens (systemd's part is ready)."""
    activator = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert activator.stderr is not None
    line = activator.stderr.readline()
    assert "Listening on" in line, line
    return activator


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed (Debian package systemd)",
)
async def test_systemd_socket_activate_starts_the_daemon_on_the_first_client(
    short_tmp: Path,
) -> None:
    socket_path = short_tmp / "sd" / "copilotd.sock"
    socket_path.parent.mkdir(mode=0o700)
    command = [
        "systemd-socket-activate",
        "--listen",
        str(socket_path),
        # It passes on only what it is told to (as systemd does).
        *(f"--setenv={name}" for name in PASSED_ENV if name in os.environ),
        sys.executable,
        "-m",
        "copilotd",
        "serve",
        "--data-dir",
        str(short_tmp / "data"),
    ]
    activator = start_activator(command)
    os.chmod(socket_path, 0o600)  # SocketMode=0600, as copilotd.socket: clients refuse looser
    try:
        assert not (short_tmp / "data").exists()  # nothing started yet
        assert await ping(socket_path)  # the first client starts it
        status = json.loads(ok(copilotd(None, "status", "--json", "--socket", str(socket_path))))
        assert status["socket_activated"] is True and status["pid"] == activator.pid
        activator.send_signal(signal.SIGTERM)
        assert activator.wait(30) == 0
    finally:
        if activator.poll() is None:
            activator.kill()
            activator.wait()


def activated_command(socket_path: Path, data_dir: Path) -> list[str]:
    return [
        "systemd-socket-activate",
        "--listen",
        str(socket_path),
        *(f"--setenv={name}" for name in PASSED_ENV if name in os.environ),
        sys.executable,
        "-m",
        "copilotd",
        "serve",
        "--data-dir",
        str(data_dir),
    ]


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed (Debian package systemd)",
)
async def test_the_first_client_and_status_wait_for_the_daemon_their_connection_starts(
    short_tmp: Path,
) -> None:
    """The connection that makes systemd start the daemon is waited on: the first
    client neither fails nor auto-starts a second daemon, and the first
    `copilotd status` finds the daemon running (the daemon takes far longer to
    start than the old 100 ms connect timeout)."""
    socket_path = short_tmp / "sd" / "copilotd.sock"
    socket_path.parent.mkdir(mode=0o700)
    client_data = short_tmp / "client-data"  # where an auto-started daemon would log
    activator = start_activator(activated_command(socket_path, short_tmp / "data"))
    os.chmod(socket_path, 0o600)  # SocketMode=0600, as copilotd.socket: clients refuse looser
    try:
        async with CopilotClient(socket_path=socket_path, data_dir=client_data) as client:
            assert await client.list_sessions() == []
        assert not (client_data / "copilotd.log").exists()  # nothing was auto-started
        assert daemons_serving(socket_path) == []  # (the activated daemon is not given --socket)
        activator.send_signal(signal.SIGTERM)
        assert activator.wait(30) == 0
        activator = start_activator(activated_command(socket_path, short_tmp / "data"))
        os.chmod(socket_path, 0o600)
        status = json.loads(ok(copilotd(None, "status", "--json", "--socket", str(socket_path))))
        assert status["running"] is True and status["pid"] == activator.pid
    finally:
        if activator.poll() is None:
            activator.kill()
            activator.wait()


# -- the units -----------------------------------------------------------------------------


def install_env(home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "COPILOTD_DATA_DIR": "",
    }


def test_install_service_writes_units_for_this_installation(tmp_path: Path) -> None:
    env = install_env(tmp_path)
    output = ok(copilotd(None, "install-service", env=env))
    unit_dir = tmp_path / ".config" / "systemd" / "user"
    service = (unit_dir / "copilotd.service").read_text()
    assert f"ExecStart={sys.executable} -m copilotd serve\n" in service
    assert "Type=notify" in service and "WatchdogSec=" in service
    assert "ReadWritePaths=%h/.local/share/copilotd" in service
    assert (unit_dir / "copilotd.socket").read_text().count(
        "ListenStream=%t/copilotd/copilotd.sock"
    ) == 1
    data_dir = tmp_path / ".local" / "share" / "copilotd"
    assert data_dir.is_dir() and data_dir.stat().st_mode & 0o777 == 0o700
    assert "systemctl --user daemon-reload" in output
    assert "systemctl --user enable --now copilotd.socket" in output

    assert ok(copilotd(None, "install-service", env=env)).count("unchanged") == 2
    (unit_dir / "copilotd.service").write_text(service + "# edited\n")
    line = one_line_error(copilotd(None, "install-service", env=env))
    assert "copilotd.service exists and differs; pass --force" in line
    assert "wrote" in ok(copilotd(None, "install-service", "--force", env=env))
    assert (unit_dir / "copilotd.service").read_text() == service


def test_install_service_follows_a_custom_data_dir(tmp_path: Path) -> None:
    env = {**install_env(tmp_path), "XDG_DATA_HOME": str(tmp_path / "my data")}
    ok(copilotd(None, "install-service", env=env))
    service = (tmp_path / ".config" / "systemd" / "user" / "copilotd.service").read_text()
    data_dir = tmp_path / "my data" / "copilotd"
    assert f"--data-dir '{data_dir}'" in service
    assert f"ReadWritePaths='{data_dir}'" in service


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd; .ci/run installs it)",
)
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    env = install_env(tmp_path)
    ok(copilotd(None, "install-service", env=env))
    unit_dir = tmp_path / ".config" / "systemd" / "user"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = subprocess.run(
        [
            "systemd-analyze",
            "--user",
            "verify",
            str(unit_dir / "copilotd.service"),
            str(unit_dir / "copilotd.socket"),
        ],
        env={**os.environ, **env, "XDG_RUNTIME_DIR": str(runtime)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # not even a warning (unknown keys only warn)
