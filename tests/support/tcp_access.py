"""A daemon listening on TCP with a bearer token, as tests reach it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import grpc

from tests.support.daemon_process import DaemonProcess

LISTENING = re.compile(r"listening on tcp (\S+)")


def write_token(directory: Path, token: str, mode: int = 0o600) -> Path:
    path = directory / "token"
    path.write_text(token + "\n")
    os.chmod(path, mode)
    return path


def tcp_address(daemon: DaemonProcess) -> str:
    """HOST:PORT the daemon logged it listens on (it picks the port: --listen HOST:0)."""
    match = LISTENING.search("".join(daemon.output))
    assert match, "".join(daemon.output)
    return match.group(1)


def with_token(token: str, base: grpc.ChannelCredentials | None = None) -> grpc.ChannelCredentials:
    """Channel credentials presenting ``token`` (over plain loopback TCP unless ``base``)."""
    base = base or grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    return grpc.composite_channel_credentials(base, grpc.access_token_call_credentials(token))
