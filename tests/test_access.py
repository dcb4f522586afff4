"""Access: only the daemon's user on the socket; TCP only when configured, with a token.

* The socket's folder is 0700 and the socket 0600; the data is private too.
* Another local user cannot connect (the test creates that user when it runs
  as root, and skips otherwise). A control step opens the socket up and sees
  that user connect, so the refusal is the daemon's doing, not the test's.
* No TCP port unless ``--listen``; then a bearer token is required (missing
  or wrong: UNAUTHENTICATED), plain TCP only on loopback, TLS with a
  certificate and key; tokens never reach the log.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from copilot_client import CopilotClient, DaemonUnavailableError, UnauthenticatedError
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd.api.access import tcp_listener
from copilotd.config import ConfigError, ConfigFile
from tests.support.daemon_process import DaemonProcess
from tests.support.privileged import python_for
from tests.support.tcp_access import tcp_address, with_token, write_token
from tests.support.wire import health_check

ROOT = Path(__file__).resolve().parent.parent

# -- files and the socket -----------------------------------------------------


def test_socket_and_data_are_private(daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(daemon.socket_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(daemon.socket_path.stat().st_mode) == 0o600
    for path in [daemon.data_dir, *daemon.data_dir.rglob("*")]:
        assert not stat.S_IMODE(path.stat().st_mode) & 0o077, path
        assert path.stat().st_uid == os.getuid()


def test_a_loose_socket_folder_is_tightened(short_tmp: Path) -> None:
    run_dir = short_tmp / "run"
    run_dir.mkdir(mode=0o755)
    os.chmod(run_dir, 0o777)
    daemon = DaemonProcess(short_tmp).start()
    try:
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    finally:
        daemon.kill()


# -- another local user -------------------------------------------------------

CONNECT = """
import socket, sys
peer = socket.socket(socket.AF_UNIX)
try:
    peer.connect(sys.argv[1])
except PermissionError:
    print("refused")
else:
    print("connected")
"""


CLIENT = """
import asyncio, sys
try:
    from copilot_client import CopilotClient, CopilotError
except ImportError:
    print("no client")
    sys.exit()

async def main():
    try:
        async with CopilotClient(socket_path=sys.argv[1], auto_start=False) as client:
            await client.list_sessions()
    except CopilotError as error:  # the client's own check, or the socket's mode
        print("refused:", error)
    else:
        print("connected")

asyncio.run(main())
"""


def run_as(user: str, script: str, socket_path: Path) -> str:
    """Run ``script`` as ``user``, with this checkout's packages importable if it can read them."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    result = subprocess.run(
        [python_for(user), "-c", script, str(socket_path)],
        user=user,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join([str(ROOT), *site])},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def connect_as(user: str, socket_path: Path) -> str:
    return run_as(user, CONNECT, socket_path)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder other users can reach: only the daemon's own modes may keep them out."""
    for base in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(base) and stat.S_IMODE(os.stat(base).st_mode) & 0o001:
            path = Path(tempfile.mkdtemp(prefix="cpd", dir=base))
            os.chmod(path, 0o755)
            yield path
            shutil.rmtree(path, ignore_errors=True)
            return
    pytest.skip("no temp folder that other users may enter")


def test_another_local_user_cannot_connect(open_tmp: Path, stranger: str) -> None:
    daemon = DaemonProcess(open_tmp).start()
    try:
        assert connect_as(stranger, daemon.socket_path) == "refused"
        through_client = run_as(stranger, CLIENT, daemon.socket_path)
        assert through_client == "no client" or (
            through_client.startswith("refused:") and "not to you" in through_client
        ), through_client
        print(f"\nFIGURES another user ({stranger}) through the client: {through_client}")
        # Even with its folder opened up, the socket itself (0600) refuses.
        os.chmod(daemon.socket_path.parent, 0o755)
        assert connect_as(stranger, daemon.socket_path) == "refused"
        # Control: opened up entirely, the same user gets through.
        os.chmod(daemon.socket_path, 0o666)
        assert connect_as(stranger, daemon.socket_path) == "connected"
    finally:
        daemon.kill()


# -- TCP ----------------------------------------------------------------------


def listening_tcp_ports(pid: int) -> list[str]:
    """Local addresses of the TCP sockets that process ``pid`` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


def start_failure(short_tmp: Path, *args: str, env: dict[str, str] | None = None) -> str:
    daemon = DaemonProcess(short_tmp, list(args))
    result = subprocess.run(
        daemon.command(), capture_output=True, text=True, timeout=60, env=env or dict(os.environ)
    )
    assert result.returncode == 1, result.stderr
    assert "copilotd: cannot start:" in result.stderr
    return result.stderr


def test_no_tcp_port_unless_configured(daemon: DaemonProcess, short_tmp: Path) -> None:
    assert daemon.process is not None
    assert listening_tcp_ports(daemon.process.pid) == []
    token = write_token(short_tmp, secrets.token_urlsafe(32))
    listening = DaemonProcess(
        short_tmp / "tcp", ["--listen", "127.0.0.1:0", "--token-file", str(token)]
    )
    listening.start()
    try:
        assert listening.process is not None
        assert len(listening_tcp_ports(listening.process.pid)) == 1
    finally:
        listening.kill()


def test_tcp_settings_that_are_refused(short_tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COPILOTD_TOKEN"}
    good = write_token(short_tmp, secrets.token_urlsafe(32))
    assert "needs a bearer token" in start_failure(short_tmp, "--listen", "127.0.0.1:0", env=env)
    loose = short_tmp / "loose"
    loose.mkdir()
    world_readable = write_token(loose, secrets.token_urlsafe(32), mode=0o644)
    assert "chmod 600" in start_failure(
        short_tmp, "--listen", "127.0.0.1:0", "--token-file", str(world_readable)
    )
    short = short_tmp / "short"
    short.mkdir()
    assert "at least 16 characters" in start_failure(
        short_tmp, "--listen", "127.0.0.1:0", "--token-file", str(write_token(short, "secret"))
    )
    assert "plain TCP is allowed on a loopback address only" in start_failure(
        short_tmp, "--listen", "0.0.0.0:0", "--token-file", str(good)
    )
    assert "both a certificate and its key" in start_failure(
        short_tmp, "--listen", "127.0.0.1:0", "--token-file", str(good), "--tls-cert", str(good)
    )
    assert "is not HOST:PORT" in start_failure(
        short_tmp, "--listen", "127.0.0.1", "--token-file", str(good)
    )


async def expect_unauthenticated(channel: grpc.aio.Channel) -> None:
    stub = copilot_pb2_grpc.CopilotServiceStub(channel)
    for call in (
        stub.Ping(pb.PingRequest()),
        stub.ListSessions(pb.ListSessionsRequest()),
        health_check(channel),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in (caught.value.details() or "")
    stream = stub.StreamEvents(pb.StreamEventsRequest(session_id="over-tcp"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_plain_tcp_on_loopback_requires_the_token(short_tmp: Path) -> None:
    token = secrets.token_urlsafe(32)
    wrong = secrets.token_urlsafe(32)
    token_file = write_token(short_tmp, token)
    daemon = DaemonProcess(
        short_tmp,
        ["--listen", "127.0.0.1:0", "--token-file", str(token_file), "--log-level", "DEBUG"],
    ).start()
    try:
        address = tcp_address(daemon)
        async with CopilotClient(address=address, token=token) as client:
            session = await client.create_session(session_id="over-tcp")
            answer = await session.send_and_wait("hello over TCP", timeout=60)
            assert answer is not None and "hello over TCP" in (answer.data.content or "")
        # The same session, seen on the Unix socket (no token there).
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as local:
            assert (await local.get_session_metadata("over-tcp")) is not None

        async with grpc.aio.insecure_channel(address) as channel:
            await expect_unauthenticated(channel)
        async with grpc.aio.secure_channel(address, with_token(wrong)) as channel:
            await expect_unauthenticated(channel)
        with pytest.raises(UnauthenticatedError, match="bearer token"):
            async with CopilotClient(address=address, token=wrong) as client:
                await client.list_sessions()
        with pytest.raises(UnauthenticatedError):
            async with CopilotClient(address=address) as client:
                await client.list_sessions()
    finally:
        assert daemon.terminate() == 0
    log = "".join(daemon.output)
    assert "refused a TCP call" in log and "wrong bearer token" in log
    assert token not in log and wrong not in log


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


async def test_tls_with_certificate_and_token(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = secrets.token_urlsafe(32)
    monkeypatch.setenv("COPILOTD_TOKEN", token)  # the daemon and the client both read it
    cert, key = self_signed(short_tmp, "daemon")
    other_cert, _ = self_signed(short_tmp, "impostor")
    daemon = DaemonProcess(
        short_tmp, ["--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)]
    ).start()
    try:
        address = tcp_address(daemon)
        assert "(TLS; bearer token required)" in "".join(daemon.output)
        async with CopilotClient(address=address, tls_root_cert=cert) as client:
            session = await client.create_session(session_id="over-tls")
            answer = await session.send_and_wait("hello over TLS", timeout=60)
            assert answer is not None and "hello over TLS" in (answer.data.content or "")

        trusted = grpc.ssl_channel_credentials(cert.read_bytes())
        async with grpc.aio.secure_channel(address, trusted) as channel:
            await expect_unauthenticated(channel)  # TLS alone is not enough
        # A client that does not trust the certificate, or does not speak TLS, gets nowhere.
        with pytest.raises(DaemonUnavailableError):
            async with CopilotClient(address=address, tls_root_cert=other_cert) as client:
                await client.list_sessions()
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await copilot_pb2_grpc.CopilotServiceStub(channel).Ping(
                    pb.PingRequest(), timeout=10
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert daemon.terminate() == 0
    assert token not in "".join(daemon.output)


def test_access_settings_from_the_config_file(short_tmp: Path) -> None:
    token_file = write_token(short_tmp, "t" * 20)
    config = ConfigFile(
        short_tmp / "config.toml",
        {"access": {"listen": "[::1]:7777", "token_file": str(token_file)}},
    )
    listener = tcp_listener(config, environ={})
    assert listener is not None
    assert (listener.host, listener.port, listener.address) == ("::1", 7777, "[::1]:7777")
    assert "t" * 20 not in repr(listener)
    # The command line wins; no listen address at all means no TCP.
    from_cli = tcp_listener(config, listen="127.0.0.1:9", environ={})
    assert from_cli is not None and from_cli.port == 9
    assert tcp_listener(ConfigFile(), environ={"COPILOTD_TOKEN": "t" * 20}) is None
    with pytest.raises(ConfigError, match="listen must be a string"):
        tcp_listener(ConfigFile(None, {"access": {"listen": 7777}}), environ={})
