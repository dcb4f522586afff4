"""The administration RPCs, on top of the session RPCs: thin, like the rest.

A subclass rather than more methods in ``_servicer.py``, so that the service
grows by modules; errors are translated by the same ``_translate_errors``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilotd.admin.service import AdminService, rule_from_proto
from copilotd.api.errors import Context
from copilotd.api.errors import translate_errors as _translate_errors
from copilotd.api.servicer import CopilotServicer
from copilotd.limits import byte_batches
from copilotd.sessions.service import SessionService


class AdminServicer(CopilotServicer):
    """``CopilotService`` with its administration section."""

    def __init__(self, service: SessionService, admin: AdminService) -> None:
        super().__init__(service)
        self._admin = admin

    async def GetDaemonStatus(
        self, request: pb.GetDaemonStatusRequest, context: Context
    ) -> pb.GetDaemonStatusResponse:
        async with _translate_errors(context, "GetDaemonStatus"):
            status = self._admin.status()
        return status

    async def SetSessionPinned(
        self, request: pb.SetSessionPinnedRequest, context: Context
    ) -> pb.SetSessionPinnedResponse:
        async with _translate_errors(context, "SetSessionPinned"):
            metadata = await self._admin.set_pinned(request.session_id, request.pinned)
        return pb.SetSessionPinnedResponse(session=metadata)

    async def PruneSessions(
        self, request: pb.PruneSessionsRequest, context: Context
    ) -> pb.PruneSessionsResponse:
        async with _translate_errors(context, "PruneSessions"):
            if request.HasField("policy"):
                rule = rule_from_proto(request.policy)
            else:
                rule = self._admin.configured_rule()
            if request.dry_run:
                sessions, pinned_kept = self._admin.preview(rule)
            else:
                result = await self._admin.prune(rule)
                sessions, pinned_kept = result.sessions, result.pinned_kept
        return pb.PruneSessionsResponse(
            sessions=next(byte_batches(sessions), []),
            pinned_kept=pinned_kept,
            session_count=len(sessions),
        )

    async def ImportSession(
        self, request_iterator: AsyncIterable[pb.ImportSessionRequest], context: Context
    ) -> pb.ImportSessionResponse:
        async with _translate_errors(context, "ImportSession"):
            result = await self._admin.import_session(request_iterator)
        return pb.ImportSessionResponse(
            session=result.metadata,
            original_session_id=result.original_session_id,
            replaced=result.replaced,
            closed_open_turn=result.closed_open_turn,
        )

    async def BackupStore(
        self, request: pb.BackupStoreRequest, context: Context
    ) -> AsyncIterator[pb.BackupStoreResponse]:
        async with _translate_errors(context, "BackupStore"):
            yield pb.BackupStoreResponse(info=self._admin.backup_info())
            total = 0
            async with contextlib.aclosing(self._admin.backup()) as pieces:
                async for piece in pieces:
                    total += len(piece)
                    yield pb.BackupStoreResponse(data=piece)
            yield pb.BackupStoreResponse(complete=True, total_bytes=total)
