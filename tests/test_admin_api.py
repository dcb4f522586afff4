"""The administration RPCs on the wire: what other languages see, bad inputs included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from copilot_client import (
    CopilotClient,
    InvalidArgumentError,
    InvalidImportError,
    NoRetentionPolicyError,
    SessionNotFoundError,
)
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc, events_pb2
from copilotd.store import SCHEMA_VERSION
from tests.support.daemon_process import DaemonProcess
from tests.support.wire import wire_error


@pytest.fixture
async def stub(daemon: DaemonProcess) -> AsyncIterator[copilot_pb2_grpc.CopilotServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield copilot_pb2_grpc.CopilotServiceStub(channel)


async def requests(*items: pb.ImportSessionRequest) -> AsyncIterator[pb.ImportSessionRequest]:
    for item in items:
        yield item


async def exported(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, session_id: str
) -> tuple[pb.SessionMetadata, list[events_pb2.SessionEvent]]:
    metadata = (await stub.GetSession(pb.GetSessionRequest(session_id=session_id))).session
    events = (await stub.ListEvents(pb.ListEventsRequest(session_id=session_id))).events
    return metadata, list(events)


async def test_status(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, daemon: DaemonProcess
) -> None:
    status = await stub.GetDaemonStatus(pb.GetDaemonStatusRequest())
    assert daemon.process is not None and status.pid == daemon.process.pid
    assert status.socket_path == str(daemon.socket_path)
    assert status.data_dir == str(daemon.data_dir)
    assert status.store_location == f"lmdb {daemon.data_dir / 'store'}"
    assert not status.socket_activated and not status.metrics_address
    assert status.retention == pb.RetentionPolicy()  # off


async def test_pinning(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, daemon: DaemonProcess
) -> None:
    await stub.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(session_id="p")))
    before = (await stub.GetSession(pb.GetSessionRequest(session_id="p"))).session
    pinned = (
        await stub.SetSessionPinned(pb.SetSessionPinnedRequest(session_id="p", pinned=True))
    ).session
    assert pinned.pinned and pinned.modified_time == before.modified_time
    listed = (await stub.ListSessions(pb.ListSessionsRequest())).sessions
    assert [s.pinned for s in listed] == [True]

    error = await wire_error(
        stub.SetSessionPinned(pb.SetSessionPinnedRequest(session_id="gone", pinned=True))
    )
    assert (error.code, error.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_SESSION_NOT_FOUND",
    )
    error = await wire_error(stub.SetSessionPinned(pb.SetSessionPinnedRequest(session_id="../x")))
    assert (error.code, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_SESSION_ID",
    )
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        assert not (await client.unpin_session("p")).pinned
        assert (await client.pin_session("p")).pinned
        with pytest.raises(SessionNotFoundError):
            await client.pin_session("gone")
        with pytest.raises(InvalidArgumentError):
            await client.pin_session("")


async def test_prune_rule_errors(stub: copilot_pb2_grpc.CopilotServiceAsyncStub) -> None:
    error = await wire_error(stub.PruneSessions(pb.PruneSessionsRequest(dry_run=True)))
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_NO_RETENTION_POLICY",
    )
    assert type(error.mapped) is NoRetentionPolicyError
    error = await wire_error(
        stub.PruneSessions(pb.PruneSessionsRequest(policy=pb.RetentionPolicy(), dry_run=True))
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "sets no limit" in error.details and "--older-than" in error.details
    response = await stub.PruneSessions(
        pb.PruneSessionsRequest(policy=pb.RetentionPolicy(max_sessions=0), dry_run=True)
    )
    assert list(response.sessions) == []


async def test_import_over_the_wire(stub: copilot_pb2_grpc.CopilotServiceAsyncStub) -> None:
    await stub.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(session_id="src")))
    await stub.SetSessionPinned(pb.SetSessionPinnedRequest(session_id="src", pinned=True))
    metadata, events = await exported(stub, "src")
    header = pb.ImportHeader(metadata=metadata, event_count=len(events))

    error = await wire_error(
        stub.ImportSession(requests(pb.ImportSessionRequest(header=header, events=events)))
    )
    assert (error.code, error.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "ERROR_REASON_SESSION_EXISTS",
    )
    assert "on_conflict=RENAME" in error.details

    header.on_conflict = pb.IMPORT_CONFLICT_RENAME
    # Events may come in any batches; the header only first.
    response = await stub.ImportSession(
        requests(pb.ImportSessionRequest(header=header), pb.ImportSessionRequest(events=events))
    )
    assert response.session.session_id == "src-imported" and response.original_session_id == "src"
    assert response.session.pinned
    _, copied = await exported(stub, "src-imported")
    assert copied == events

    bad: list[tuple[Any, str]] = [
        (requests(), "stream was empty"),
        (
            requests(pb.ImportSessionRequest(events=events)),
            "first ImportSession request must carry the header",
        ),
        (
            requests(
                pb.ImportSessionRequest(header=header), pb.ImportSessionRequest(header=header)
            ),
            "only the first ImportSession request",
        ),
        (
            requests(
                pb.ImportSessionRequest(
                    header=pb.ImportHeader(metadata=metadata, event_count=2), events=events
                )
            ),
            "1 events arrived but the header announces 2",
        ),
    ]
    for stream, message in bad:
        error = await wire_error(stub.ImportSession(stream))
        assert (error.code, error.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "ERROR_REASON_INVALID_IMPORT",
        )
        assert type(error.mapped) is InvalidImportError
        assert message in error.details

    live_only = events_pb2.SessionEvent()
    live_only.CopyFrom(events[0])
    live_only.type, live_only.ephemeral = "session.idle", True
    error = await wire_error(
        stub.ImportSession(requests(pb.ImportSessionRequest(header=header, events=[live_only])))
    )
    assert "live-only events" in error.details


async def test_backup_stream_shape(stub: copilot_pb2_grpc.CopilotServiceAsyncStub) -> None:
    await stub.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(session_id="b")))
    responses = [r async for r in stub.BackupStore(pb.BackupStoreRequest())]
    info, *pieces, last = responses
    assert info.info.format == "lmdb" and info.info.schema_version == SCHEMA_VERSION
    assert info.info.estimated_bytes > 0
    data = b"".join(piece.data for piece in pieces)
    assert last.complete and last.total_bytes == len(data) > 0
    assert not any(piece.complete for piece in pieces)


async def test_prune_of_sessions_too_large_for_one_answer(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub,
) -> None:
    """Ten sessions' metadata weigh 9 MB here: the answer lists what fits and counts all."""
    system = pb.SystemMessage(content="s" * 900_000)
    for number in range(11):
        config = pb.SessionConfig(session_id=f"big-{number}", system_message=system)
        await stub.CreateSession(pb.CreateSessionRequest(config=config))
    rule = pb.RetentionPolicy(max_sessions=1)
    preview = await stub.PruneSessions(pb.PruneSessionsRequest(policy=rule, dry_run=True))
    pruned = await stub.PruneSessions(pb.PruneSessionsRequest(policy=rule))
    for response in (preview, pruned):
        assert response.session_count == 10
        assert 1 <= len(response.sessions) < 10
        assert response.ByteSize() < 3 * 1024 * 1024
        assert [s.session_id for s in response.sessions] == [
            f"big-{number}" for number in range(9, 9 - len(response.sessions), -1)
        ]
    left = await stub.ListSessions(pb.ListSessionsRequest())
    assert [s.session_id for s in left.sessions] == ["big-10"]
