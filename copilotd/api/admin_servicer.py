"""``CopilotAdminService``: the administration RPCs, thin like the session ones.

Its own servicer, composed into ``CopilotServicer`` (which still answers the
deprecated copies of these methods) rather than inherited by it, so the two
services stay separate on the wire and in the code.

The admin layer speaks ``copilot.v1``'s administration messages, which have
the very fields of ``copilot.admin.v1``'s (tests/test_protos_buf.py keeps
them identical), so crossing between the two is a re-parse of the same bytes
(:func:`same_wire`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import TypeVar

from google.protobuf.message import Message

from copilot_client.proto.admin.v1 import admin_pb2, admin_pb2_grpc
from copilot_client.proto.v1 import copilot_pb2
from copilotd.admin.service import AdminService, rule_from_proto
from copilotd.api.errors import Context, translate_errors
from copilotd.limits import byte_batches

M = TypeVar("M", bound=Message)


def same_wire(message: Message, kind: type[M]) -> M:
    """``message`` as ``kind``, a message with the same fields and numbers."""
    return kind.FromString(message.SerializeToString())


async def all_same_wire(messages: AsyncIterable[Message], kind: type[M]) -> AsyncIterator[M]:
    """Each of a stream's ``messages`` as ``kind`` (see :func:`same_wire`)."""
    async for message in messages:
        yield same_wire(message, kind)


class AdminServicer(admin_pb2_grpc.CopilotAdminServiceServicer):
    def __init__(self, admin: AdminService) -> None:
        self._admin = admin

    async def GetDaemonStatus(
        self, request: admin_pb2.GetDaemonStatusRequest, context: Context
    ) -> admin_pb2.GetDaemonStatusResponse:
        async with translate_errors(context, "GetDaemonStatus"):
            status = self._admin.status()
        return same_wire(status, admin_pb2.GetDaemonStatusResponse)

    async def SetSessionPinned(
        self, request: admin_pb2.SetSessionPinnedRequest, context: Context
    ) -> admin_pb2.SetSessionPinnedResponse:
        async with translate_errors(context, "SetSessionPinned"):
            metadata = await self._admin.set_pinned(request.session_id, request.pinned)
        return admin_pb2.SetSessionPinnedResponse(session=metadata)

    async def PruneSessions(
        self, request: admin_pb2.PruneSessionsRequest, context: Context
    ) -> admin_pb2.PruneSessionsResponse:
        async with translate_errors(context, "PruneSessions"):
            if request.HasField("policy"):
                rule = rule_from_proto(same_wire(request.policy, copilot_pb2.RetentionPolicy))
            else:
                rule = self._admin.configured_rule()
            if request.dry_run:
                sessions, pinned_kept = self._admin.preview(rule)
            else:
                result = await self._admin.prune(rule)
                sessions, pinned_kept = result.sessions, result.pinned_kept
        return admin_pb2.PruneSessionsResponse(
            sessions=next(byte_batches(sessions), []),
            pinned_kept=pinned_kept,
            session_count=len(sessions),
        )

    async def ImportSession(
        self, request_iterator: AsyncIterable[admin_pb2.ImportSessionRequest], context: Context
    ) -> admin_pb2.ImportSessionResponse:
        async with translate_errors(context, "ImportSession"):
            result = await self._admin.import_session(
                all_same_wire(request_iterator, copilot_pb2.ImportSessionRequest)
            )
        return admin_pb2.ImportSessionResponse(
            session=result.metadata,
            original_session_id=result.original_session_id,
            replaced=result.replaced,
            closed_open_turn=result.closed_open_turn,
        )

    async def BackupStore(
        self, request: admin_pb2.BackupStoreRequest, context: Context
    ) -> AsyncIterator[admin_pb2.BackupStoreResponse]:
        async with translate_errors(context, "BackupStore"):
            info = same_wire(self._admin.backup_info(), admin_pb2.BackupInfo)
            yield admin_pb2.BackupStoreResponse(info=info)
            total = 0
            async with contextlib.aclosing(self._admin.backup()) as pieces:
                async for piece in pieces:
                    total += len(piece)
                    yield admin_pb2.BackupStoreResponse(data=piece)
            yield admin_pb2.BackupStoreResponse(complete=True, total_bytes=total)
