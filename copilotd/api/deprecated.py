"""``CopilotService`` as served until the next release: the session RPCs plus
the deprecated copies of the administration RPCs.

The copies are answered by the one ``AdminServicer`` that serves
``CopilotAdminService``, composed here. Their messages carry the very fields
and numbers of ``copilot.admin.v1``'s (tests/test_protos_buf.py keeps them
identical), so crossing between the two is a re-parse of the same bytes
(:func:`same_wire`), done here and nowhere else. When the copies go, this
module goes and the server registers ``CopilotServicer`` itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import TypeVar

from google.protobuf.message import Message

from copilot_client.proto.admin.v1 import admin_pb2
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilotd.api.admin_servicer import AdminServicer
from copilotd.api.errors import Context
from copilotd.api.servicer import CopilotServicer
from copilotd.search import SearchEngine
from copilotd.sessions.service import SessionService

M = TypeVar("M", bound=Message)


def same_wire(message: Message, kind: type[M]) -> M:
    """``message`` as ``kind``, a message with the same fields and numbers."""
    return kind.FromString(message.SerializeToString())


async def all_same_wire(messages: AsyncIterable[Message], kind: type[M]) -> AsyncIterator[M]:
    """Each of a stream's ``messages`` as ``kind`` (see :func:`same_wire`)."""
    async for message in messages:
        yield same_wire(message, kind)


class CopilotServicerWithDeprecatedAdmin(CopilotServicer):
    def __init__(self, service: SessionService, search: SearchEngine, admin: AdminServicer) -> None:
        super().__init__(service, search)
        self._admin = admin

    async def GetDaemonStatus(
        self, request: pb.GetDaemonStatusRequest, context: Context
    ) -> pb.GetDaemonStatusResponse:
        response = await self._admin.GetDaemonStatus(
            same_wire(request, admin_pb2.GetDaemonStatusRequest), context
        )
        return same_wire(response, pb.GetDaemonStatusResponse)

    async def SetSessionPinned(
        self, request: pb.SetSessionPinnedRequest, context: Context
    ) -> pb.SetSessionPinnedResponse:
        response = await self._admin.SetSessionPinned(
            same_wire(request, admin_pb2.SetSessionPinnedRequest), context
        )
        return same_wire(response, pb.SetSessionPinnedResponse)

    async def PruneSessions(
        self, request: pb.PruneSessionsRequest, context: Context
    ) -> pb.PruneSessionsResponse:
        response = await self._admin.PruneSessions(
            same_wire(request, admin_pb2.PruneSessionsRequest), context
        )
        return same_wire(response, pb.PruneSessionsResponse)

    async def ImportSession(
        self, request_iterator: AsyncIterable[pb.ImportSessionRequest], context: Context
    ) -> pb.ImportSessionResponse:
        response = await self._admin.ImportSession(
            all_same_wire(request_iterator, admin_pb2.ImportSessionRequest), context
        )
        return same_wire(response, pb.ImportSessionResponse)

    async def BackupStore(
        self, request: pb.BackupStoreRequest, context: Context
    ) -> AsyncIterator[pb.BackupStoreResponse]:
        responses = self._admin.BackupStore(
            same_wire(request, admin_pb2.BackupStoreRequest), context
        )
        async for response in all_same_wire(responses, pb.BackupStoreResponse):
            yield response
