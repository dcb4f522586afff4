"""``CopilotAdminService``: the administration RPCs, thin like the session ones.

Its own servicer, composed into the session service's servicer (which still
answers the deprecated copies of these methods, see ``deprecated.py``) rather
than inherited by it, so the two services stay separate on the wire and in
the code. The admin layer answers with plain values; the wire messages are
built here, and only here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from datetime import timedelta
from typing import Final

from copilot_client.proto.admin.v1 import admin_pb2, admin_pb2_grpc
from copilotd.admin.retention import RetentionPolicy, RetentionRule
from copilotd.admin.service import AdminService, DaemonStatus
from copilotd.api.errors import Context, translate_errors
from copilotd.errors import InvalidArgumentError
from copilotd.limits import byte_batches
from copilotd.search import SearchEngine

# The largest age a timedelta holds, in whole seconds: a larger max_age_seconds
# would raise OverflowError (an INTERNAL error) instead of being refused.
MAX_AGE_SECONDS: Final = int(timedelta.max.total_seconds())


class AdminServicer(admin_pb2_grpc.CopilotAdminServiceServicer):
    def __init__(self, admin: AdminService, search: SearchEngine) -> None:
        self._admin = admin
        self._search = search

    async def GetDaemonStatus(
        self, request: admin_pb2.GetDaemonStatusRequest, context: Context
    ) -> admin_pb2.GetDaemonStatusResponse:
        async with translate_errors(context, "GetDaemonStatus"):
            status = await self._admin.status()
        return status_to_proto(status)

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
                rule = rule_from_proto(request.policy)
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
            result = await self._admin.import_session(request_iterator)
        # Imports commit without publishing events: the index reads them from the store.
        self._search.reindex(result.metadata.session_id)
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
            info = self._admin.backup_info()
            yield admin_pb2.BackupStoreResponse(
                info=admin_pb2.BackupInfo(
                    format=info.format,
                    schema_version=info.schema_version,
                    estimated_bytes=info.estimated_bytes,
                )
            )
            total = 0
            async with contextlib.aclosing(self._admin.backup()) as pieces:
                async for piece in pieces:
                    total += len(piece)
                    yield admin_pb2.BackupStoreResponse(data=piece)
            yield admin_pb2.BackupStoreResponse(complete=True, total_bytes=total)


def status_to_proto(status: DaemonStatus) -> admin_pb2.GetDaemonStatusResponse:
    info = status.info
    return admin_pb2.GetDaemonStatusResponse(
        version=info.version,
        pid=status.pid,
        socket_path=str(info.socket_path),
        data_dir=str(info.data_dir),
        start_time=info.start_time,
        store_bytes=status.store_bytes,
        session_count=status.session_count,
        running_turns=status.running_turns,
        socket_activated=info.socket_activated,
        retention=policy_to_proto(status.retention),
        metrics_address=info.metrics_address,
        config_file=str(info.config_file or ""),
        store_backend=info.store_backend,
        store_location=info.store_location,
    )


def policy_to_proto(policy: RetentionPolicy) -> admin_pb2.RetentionPolicy:
    proto = admin_pb2.RetentionPolicy()
    rule = policy.rule
    if rule is not None:  # no rule: all zero, as the proto documents "off"
        if rule.max_age is not None:
            proto.max_age_seconds = int(rule.max_age.total_seconds())
        if rule.max_sessions is not None:
            proto.max_sessions = rule.max_sessions
        proto.sweep_interval_seconds = int(policy.sweep_interval.total_seconds())
    return proto


def rule_from_proto(proto: admin_pb2.RetentionPolicy) -> RetentionRule:
    if proto.max_age_seconds > MAX_AGE_SECONDS:
        raise InvalidArgumentError(
            f"max_age_seconds {proto.max_age_seconds} is over the longest age copilotd can "
            f"count ({MAX_AGE_SECONDS} s, about 2.7 million years); give a smaller age"
        )
    max_age = timedelta(seconds=proto.max_age_seconds) if proto.max_age_seconds else None
    max_sessions = proto.max_sessions if proto.HasField("max_sessions") else None
    if max_age is None and max_sessions is None:
        raise InvalidArgumentError(
            "the retention rule sets no limit; set max_age_seconds (CLI --older-than) and/or "
            "max_sessions (CLI --keep)"
        )
    return RetentionRule(max_age=max_age, max_sessions=max_sessions)
