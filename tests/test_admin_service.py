"""CopilotAdminService on the wire, through its own stub; and the deprecated
copies on CopilotService answering the same (tests/test_admin_api.py covers
those copies in depth)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from copilot_client.proto.admin.v1 import admin_pb2, admin_pb2_grpc
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from tests.support.daemon_process import DaemonProcess
from tests.support.wire import wire_error


@pytest.fixture
async def channel(daemon: DaemonProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield channel


@pytest.fixture
def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.CopilotAdminServiceAsyncStub:
    return admin_pb2_grpc.CopilotAdminServiceStub(channel)


@pytest.fixture
def sessions(channel: grpc.aio.Channel) -> copilot_pb2_grpc.CopilotServiceAsyncStub:
    return copilot_pb2_grpc.CopilotServiceStub(channel)


async def one(
    *items: admin_pb2.ImportSessionRequest,
) -> AsyncIterator[admin_pb2.ImportSessionRequest]:
    for item in items:
        yield item


async def test_every_admin_rpc_through_the_admin_service(
    admin: admin_pb2_grpc.CopilotAdminServiceAsyncStub,
    sessions: copilot_pb2_grpc.CopilotServiceAsyncStub,
    daemon: DaemonProcess,
) -> None:
    status = await admin.GetDaemonStatus(admin_pb2.GetDaemonStatusRequest())
    assert daemon.process is not None and status.pid == daemon.process.pid
    assert status.data_dir == str(daemon.data_dir)

    await sessions.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(session_id="a")))
    await sessions.SendMessage(pb.SendMessageRequest(session_id="a", prompt="hello"))
    pinned = await admin.SetSessionPinned(
        admin_pb2.SetSessionPinnedRequest(session_id="a", pinned=True)
    )
    assert pinned.session.session_id == "a" and pinned.session.pinned

    everything = admin_pb2.RetentionPolicy(max_sessions=0)
    preview = await admin.PruneSessions(
        admin_pb2.PruneSessionsRequest(policy=everything, dry_run=True)
    )
    assert (preview.session_count, preview.pinned_kept) == (0, 1)

    events = (await sessions.ListEvents(pb.ListEventsRequest(session_id="a"))).events
    unpinned = pb.SessionMetadata()
    unpinned.CopyFrom(pinned.session)
    unpinned.pinned = False
    header = admin_pb2.ImportHeader(
        metadata=unpinned,
        event_count=len(events),
        on_conflict=admin_pb2.IMPORT_CONFLICT_RENAME,
    )
    imported = await admin.ImportSession(
        one(admin_pb2.ImportSessionRequest(header=header, events=events))
    )
    assert imported.original_session_id == "a"
    assert imported.session.session_id == "a-imported"
    assert imported.session.last_sequence == events[-1].sequence

    pruned = await admin.PruneSessions(admin_pb2.PruneSessionsRequest(policy=everything))
    assert [s.session_id for s in pruned.sessions] == ["a-imported"]
    assert pruned.pinned_kept == 1

    pieces = [piece async for piece in admin.BackupStore(admin_pb2.BackupStoreRequest())]
    assert pieces[0].info.format == "lmdb"
    assert pieces[-1].complete
    assert pieces[-1].total_bytes == sum(len(piece.data) for piece in pieces) > 0


async def test_admin_errors_carry_their_reason(
    admin: admin_pb2_grpc.CopilotAdminServiceAsyncStub,
) -> None:
    error = await wire_error(
        admin.SetSessionPinned(admin_pb2.SetSessionPinnedRequest(session_id="gone", pinned=True))
    )
    assert (error.code, error.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "ERROR_REASON_SESSION_NOT_FOUND",
    )
    error = await wire_error(admin.PruneSessions(admin_pb2.PruneSessionsRequest(dry_run=True)))
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ERROR_REASON_NO_RETENTION_POLICY",
    )


async def test_a_deprecated_method_answers_as_the_admin_service_does(
    admin: admin_pb2_grpc.CopilotAdminServiceAsyncStub,
    sessions: copilot_pb2_grpc.CopilotServiceAsyncStub,
) -> None:
    await sessions.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(session_id="d")))
    old = await sessions.SetSessionPinned(pb.SetSessionPinnedRequest(session_id="d", pinned=True))
    assert old.session.pinned
    new_status = await admin.GetDaemonStatus(admin_pb2.GetDaemonStatusRequest())
    old_status = await sessions.GetDaemonStatus(pb.GetDaemonStatusRequest())
    # The same bytes: a client of the deprecated method reads what it always did.
    assert old_status.SerializeToString() == new_status.SerializeToString()
    assert old_status.session_count == 1
    error = await wire_error(sessions.PruneSessions(pb.PruneSessionsRequest(dry_run=True)))
    assert error.reason == "ERROR_REASON_NO_RETENTION_POLICY"


async def test_an_old_send_and_wait_request_still_answers(
    channel: grpc.aio.Channel, sessions: copilot_pb2_grpc.CopilotServiceAsyncStub
) -> None:
    await sessions.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(session_id="w")))
    # The bytes a client generated before SendMessageAndWait had its own
    # request message sends, sent as they are.
    send_and_wait: grpc.aio.UnaryUnaryMultiCallable[bytes, pb.SendMessageAndWaitResponse] = (
        channel.unary_unary(
            "/copilot.v1.CopilotService/SendMessageAndWait",
            request_serializer=None,
            response_deserializer=pb.SendMessageAndWaitResponse.FromString,
        )
    )
    old = pb.SendMessageRequest(session_id="w", prompt="hi", message_id="m", source="old")
    outcome = await send_and_wait(old.SerializeToString())
    assert outcome.message_id == "m"
    assert outcome.HasField("answer") and outcome.turn_end.sequence > 0
    recorded = (await sessions.ListEvents(pb.ListEventsRequest(session_id="w"))).events
    asked = [event.user_message for event in recorded if event.type == "user.message"]
    assert [(m.content, m.source) for m in asked] == [("hi", "old")]
