"""The calls that answer a session's waiting tool calls and permission requests."""

from __future__ import annotations

from ._tools import ToolResult
from .proto.v1 import copilot_pb2
from .service import ServiceClient, UseCallTimeout

__all__ = ["answer_tool_call", "decide_permission", "list_pending_calls"]


async def list_pending_calls(
    transport: ServiceClient, session_id: str, *, deadline: float | UseCallTimeout | None
) -> list[copilot_pb2.PendingToolCall]:
    request = copilot_pb2.ListPendingToolCallsRequest(session_id=session_id)
    response = await transport.call(transport.stub.ListPendingToolCalls, request, deadline=deadline)
    return list(response.calls)


async def answer_tool_call(
    transport: ServiceClient,
    session_id: str,
    tool_call_id: str,
    result: ToolResult,
    *,
    deadline: float | UseCallTimeout | None,
) -> bool:
    """Whether the result was recorded now (False: this same one was already)."""
    request = copilot_pb2.HandlePendingToolCallRequest(
        session_id=session_id, tool_call_id=tool_call_id, result=result.to_proto()
    )
    response = await transport.call(
        transport.stub.HandlePendingToolCall, request, deadline=deadline
    )
    return bool(response.recorded)


async def decide_permission(
    transport: ServiceClient,
    session_id: str,
    request_id: str,
    approved: bool,
    reason: str,
    *,
    deadline: float | UseCallTimeout | None,
) -> bool:
    """Whether the decision was recorded now (False: this same one was already)."""
    request = copilot_pb2.HandlePendingPermissionRequest(
        session_id=session_id, request_id=request_id, approved=approved, reason=reason
    )
    response = await transport.call(
        transport.stub.HandlePendingPermission, request, deadline=deadline
    )
    return bool(response.recorded)
