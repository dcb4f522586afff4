"""The gRPC servicer: unpack the request, call the core, pack the answer.

Errors are translated in one place, ``copilotd.api.errors.translate_errors``: a
``ServiceError`` becomes its status with ``ErrorInfo`` details and the
"copilot-error-reason" trailer; anything else becomes INTERNAL, with the
details only in the daemon's log.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd.api.errors import Context, translate_errors
from copilotd.events import now_timestamp
from copilotd.search import SearchEngine, SearchFilter
from copilotd.sessions.service import SessionService
from copilotd.sessions.validation import check_enum, check_time

log = logging.getLogger(__name__)


def _send_arguments(
    request: pb.SendMessageRequest | pb.SendMessageAndWaitRequest,
) -> dict[str, Any]:
    return {
        "session_id": request.session_id,
        "prompt": request.prompt,
        "source": request.source,
        "mode": request.mode,
        "expected_last_sequence": (
            request.expected_last_sequence if request.HasField("expected_last_sequence") else None
        ),
        "message_id": request.message_id,
    }


class CopilotServicer(copilot_pb2_grpc.CopilotServiceServicer):
    def __init__(self, service: SessionService, search: SearchEngine) -> None:
        self._service = service
        self._search = search

    async def Ping(self, request: pb.PingRequest, context: Context) -> pb.PingResponse:
        return pb.PingResponse(version=self._service.version, server_time=now_timestamp())

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.CreateSessionResponse:
        async with translate_errors(context, "CreateSession"):
            metadata = await self._service.create_session(request.config)
        return pb.CreateSessionResponse(session=metadata)

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Context
    ) -> pb.GetSessionResponse:
        async with translate_errors(context, "GetSession"):
            metadata = await self._service.reading(self._service.get_session, request.session_id)
        return pb.GetSessionResponse(session=metadata)

    async def ResumeSession(
        self, request: pb.ResumeSessionRequest, context: Context
    ) -> pb.ResumeSessionResponse:
        async with translate_errors(context, "ResumeSession"):
            metadata, tail, recorded = await self._service.resume_session(
                request.session_id,
                request.tail_events,
                request.provider if request.HasField("provider") else None,
                tools=request.tools if request.tools or request.replace_tools else None,
                continue_pending_work=request.continue_pending_work,
                infinite_sessions=(
                    request.infinite_sessions if request.HasField("infinite_sessions") else None
                ),
            )
        return pb.ResumeSessionResponse(
            session=metadata, tail=tail, resume_not_recorded=not recorded
        )

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        async with translate_errors(context, "ListSessions"):
            sessions, token = await self._service.reading(
                self._service.list_sessions, request.page_size, request.page_token
            )
        return pb.ListSessionsResponse(sessions=sessions, next_page_token=token)

    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: Context
    ) -> pb.DeleteSessionResponse:
        async with translate_errors(context, "DeleteSession"):
            await self._service.delete_session(request.session_id)
        return pb.DeleteSessionResponse()

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Context
    ) -> pb.SendMessageResponse:
        async with translate_errors(context, "SendMessage"):
            event, queued = await self._service.send_message(**_send_arguments(request))
        return pb.SendMessageResponse(message_id=event.id, sequence=event.sequence, queued=queued)

    async def SendMessageAndWait(
        self, request: pb.SendMessageAndWaitRequest, context: Context
    ) -> pb.SendMessageAndWaitResponse:
        async with translate_errors(context, "SendMessageAndWait"):
            outcome = await self._service.send_message_and_wait(**_send_arguments(request))
        return pb.SendMessageAndWaitResponse(
            message_id=outcome.message_id,
            answer=outcome.answer,
            error=outcome.error,
            turn_end=outcome.turn_end,
        )

    async def AbortTurn(
        self, request: pb.AbortTurnRequest, context: Context
    ) -> pb.AbortTurnResponse:
        async with translate_errors(context, "AbortTurn"):
            aborted = await self._service.abort_turn(request.session_id, request.reason)
        return pb.AbortTurnResponse(aborted=aborted)

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Context
    ) -> pb.ListEventsResponse:
        async with translate_errors(context, "ListEvents"):
            check_enum(request.order, pb.EventOrder, "order")
            events, cursor = await self._service.reading(
                self._service.list_events,
                request.session_id,
                request.cursor,
                request.page_size,
                request.order == pb.EventOrder.EVENT_ORDER_NEWEST_FIRST,
                request.include_rewound,
            )
        return pb.ListEventsResponse(events=events, next_cursor=cursor)

    async def StreamEvents(
        self, request: pb.StreamEventsRequest, context: Context
    ) -> AsyncIterator[pb.StreamEventsResponse]:
        async with translate_errors(context, "StreamEvents"):
            stream = self._service.stream_events(
                request.session_id,
                request.after_sequence,
                request.include_rewound,
                request.tool_client if request.HasField("tool_client") else None,
            )
            async with contextlib.aclosing(stream):
                async for events, live in stream:
                    yield pb.StreamEventsResponse(events=events, live=live)

    async def WatchLifecycle(
        self, request: pb.WatchLifecycleRequest, context: Context
    ) -> AsyncIterator[pb.LifecycleEvent]:
        async with translate_errors(context, "WatchLifecycle"):
            stream = self._service.watch_lifecycle(request.types)
            async with contextlib.aclosing(stream):
                async for batch in stream:
                    if not batch:
                        # Tell the client the watch is live before anything happens.
                        await context.send_initial_metadata(())
                    for event in batch:
                        yield event

    # == models and providers ==

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        async with translate_errors(context, "ListModels"):
            models, offline_only = self._service.list_models()
        return pb.ListModelsResponse(models=models, offline_only=offline_only)

    async def CompactSession(
        self, request: pb.CompactSessionRequest, context: Context
    ) -> pb.CompactSessionResponse:
        async with translate_errors(context, "CompactSession"):
            complete = await self._service.compact_session(
                request.session_id, request.custom_instructions
            )
        return pb.CompactSessionResponse(compaction_complete=complete)

    async def SetModel(self, request: pb.SetModelRequest, context: Context) -> pb.SetModelResponse:
        async with translate_errors(context, "SetModel"):
            metadata = await self._service.set_model(request.session_id, request.model)
        return pb.SetModelResponse(session=metadata)

    async def HandlePendingToolCall(
        self, request: pb.HandlePendingToolCallRequest, context: Context
    ) -> pb.HandlePendingToolCallResponse:
        async with translate_errors(context, "HandlePendingToolCall"):
            recorded = await self._service.handle_pending_tool_call(
                request.session_id, request.tool_call_id, request.result
            )
        return pb.HandlePendingToolCallResponse(recorded=recorded)

    async def HandlePendingPermission(
        self, request: pb.HandlePendingPermissionRequest, context: Context
    ) -> pb.HandlePendingPermissionResponse:
        async with translate_errors(context, "HandlePendingPermission"):
            recorded = await self._service.handle_pending_permission(
                request.session_id,
                request.request_id,
                approved=request.approved,
                reason=request.reason,
            )
        return pb.HandlePendingPermissionResponse(recorded=recorded)

    async def ListPendingToolCalls(
        self, request: pb.ListPendingToolCallsRequest, context: Context
    ) -> pb.ListPendingToolCallsResponse:
        async with translate_errors(context, "ListPendingToolCalls"):
            calls = await self._service.reading(
                self._service.list_pending_tool_calls, request.session_id
            )
        return pb.ListPendingToolCallsResponse(calls=calls)

    # == search ==

    async def SearchSessions(
        self, request: pb.SearchSessionsRequest, context: Context
    ) -> pb.SearchSessionsResponse:
        async with translate_errors(context, "SearchSessions"):
            search = SearchFilter(
                query=request.query,
                session_id_prefix=request.session_id_prefix,
                since_ns=check_time(request.since, "since") if request.HasField("since") else None,
                until_ns=check_time(request.until, "until") if request.HasField("until") else None,
                include_rewound=request.include_rewound,
            )
            hits, token = await self._search.search(search, request.page_size, request.page_token)
        response = pb.SearchSessionsResponse(next_page_token=token)
        for hit in hits:
            found = response.hits.add(
                session_id=hit.session_id,
                sequence=hit.sequence,
                event_type=hit.event_type,
                snippet=hit.snippet,
                rank=hit.rank,
                rewound=hit.rewound,
            )
            found.event_time.FromNanoseconds(hit.event_time_ns)
        return response

    # == fork and rewind ==

    async def ForkSession(
        self, request: pb.ForkSessionRequest, context: Context
    ) -> pb.ForkSessionResponse:
        async with translate_errors(context, "ForkSession"):
            metadata = await self._service.fork_session(
                request.source_session_id,
                request.new_session_id,
                request.up_to_sequence if request.HasField("up_to_sequence") else None,
            )
        return pb.ForkSessionResponse(session=metadata)

    async def RewindSession(
        self, request: pb.RewindSessionRequest, context: Context
    ) -> pb.RewindSessionResponse:
        async with translate_errors(context, "RewindSession"):
            metadata, rewind = await self._service.rewind_session(
                request.session_id,
                request.to_sequence,
                abort_turn=request.abort_turn,
                reason=request.reason,
                expected_last_sequence=(
                    request.expected_last_sequence
                    if request.HasField("expected_last_sequence")
                    else None
                ),
            )
        return pb.RewindSessionResponse(session=metadata, rewind=rewind)
