"""Filling a real daemon's store or disk, for the fault tests of the store and of turns."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from tests.support.daemon_process import DaemonProcess
from tests.support.privileged import run_as_root_or_skip

PROMPT = "x" * (48 * 1024)


@dataclass
class Written:
    """What the daemon acknowledged: session -> message ids."""

    messages: dict[str, list[str]] = field(default_factory=dict)
    refusal: grpc.aio.AioRpcError | None = None


@contextlib.asynccontextmanager
async def connect(daemon: DaemonProcess) -> AsyncIterator[copilot_pb2_grpc.CopilotServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield copilot_pb2_grpc.CopilotServiceStub(channel)


async def write_until_refused(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub,
    prefix: str,
    written: Written,
    limit: int = 500,
    prompt: str = PROMPT,
) -> None:
    """Create sessions with one large message each until the daemon refuses a write.

    Fails after ``limit`` sessions, unless ``limit`` is below 10 (a few writes
    that must all succeed).
    """
    for index in range(limit):
        session_id = f"{prefix}-{index}"
        try:
            await stub.CreateSession(
                pb.CreateSessionRequest(config=pb.SessionConfig(session_id=session_id))
            )
            written.messages[session_id] = []
            reply = await stub.SendMessage(
                pb.SendMessageRequest(session_id=session_id, prompt=prompt)
            )
            written.messages[session_id].append(reply.message_id)
        except grpc.aio.AioRpcError as error:
            written.refusal = error
            return
    if limit >= 10:
        raise AssertionError(f"{limit} large writes and the store is not full")


async def resume_until_not_recorded(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, session_id: str, limit: int = 2000
) -> tuple[pb.ResumeSessionResponse, int]:
    """Resume until the store has no room left for the session.resume event.

    Each recorded resume takes a little room; the one that finds none must
    still succeed. Returns that response and how many resumes were recorded.
    """
    for recorded in range(limit):
        reply = await stub.ResumeSession(
            pb.ResumeSessionRequest(session_id=session_id, tail_events=5)
        )
        if reply.resume_not_recorded:
            return reply, recorded
        assert reply.tail[-1].type == "session.resume"
    raise AssertionError(f"{limit} resumes recorded and the store is not full")


@contextlib.contextmanager
def mounted_small_disk(directory: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted under ``directory`` (root only; skips otherwise)."""
    mount_point = directory / "disk"
    mount_point.mkdir()
    run_as_root_or_skip(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount_point)],
        "mounting a small tmpfs",
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_disk(path: Path) -> int:
    """Write a file until the disk is full; returns its size."""
    written = 0
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            written += os.write(descriptor, b"\1" * 65536)
    except OSError as error:
        assert error.errno == 28  # ENOSPC
    finally:
        os.close(descriptor)
    return written
