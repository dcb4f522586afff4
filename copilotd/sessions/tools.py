"""Client-side tools: checking declarations, and the events of a call's life.

A call the model makes is recorded as ``tool.execution_start`` and
``external_tool.requested`` (or first ``permission.requested``, for a tool
declared without ``skip_permission``, until a client's ``permission.completed``)
in the same commit as the assistant message asking for it, and ends with
exactly one ``tool.execution_complete``: the first client result (or the
``denied`` one of a denied permission), or a synthetic one when the call is
closed unanswered (abort, resume with ``continue_pending_work=False``, the
pending timeout).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Sequence
from typing import Final

from copilot_client.proto.v1 import copilot_pb2, events_pb2
from copilotd import events as ev
from copilotd.errors import InvalidArgumentError, Reason
from copilotd.events import SessionEvent
from copilotd.providers import ToolCall, ToolSpec

ToolDefinition = events_pb2.ToolDefinition
ToolResult = events_pb2.ToolResult

# What OpenAI and Anthropic both accept as a function name.
TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
RESULT_TYPES: Final = frozenset({"", "success", "failure", "rejected", "denied", "timeout"})
INTERRUPTED_RESULT: Final = "interrupted: no client answered"
MAX_TOOLS: Final = 128


def _invalid(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message, Reason.ERROR_REASON_INVALID_TOOL)


def check_tools(tools: Sequence[ToolDefinition], field: str) -> None:
    """Refuse a declaration a provider would refuse, naming the field at fault."""
    if len(tools) > MAX_TOOLS:
        raise _invalid(f"{field}: {len(tools)} tools declared; at most {MAX_TOOLS} are accepted")
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"{field}[{index}]"
        if not TOOL_NAME.fullmatch(tool.name):
            raise _invalid(
                f"{where}.name {tool.name!r} is not a valid tool name: use 1 to 64 letters, "
                "digits, '_' or '-' (what every model provider accepts)"
            )
        if tool.name in seen:
            raise _invalid(f"{where}.name: tool {tool.name!r} is declared twice; names are unique")
        seen.add(tool.name)
        if not tool.parameters_json_schema:
            continue
        try:
            schema = json.loads(tool.parameters_json_schema)
        except ValueError as error:
            raise _invalid(
                f"{where}.parameters_json_schema is not JSON ({error}); give a JSON schema "
                'object such as {"type": "object", "properties": {...}}'
            ) from None
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise _invalid(
                f"{where}.parameters_json_schema must be a JSON schema of an object "
                '({"type": "object", "properties": {...}}): a tool takes named arguments'
            )


def check_result(result: ToolResult) -> None:
    if result.result_type not in RESULT_TYPES:
        raise InvalidArgumentError(
            f"result.result_type {result.result_type!r} is not one of "
            "success, failure, rejected, denied, timeout"
        )


def tool_specs(tools: Iterable[ToolDefinition]) -> list[ToolSpec]:
    """The declarations as providers take them (an empty schema: no arguments)."""
    return [
        ToolSpec(
            tool.name,
            tool.description,
            tool.parameters_json_schema or '{"type": "object", "properties": {}}',
        )
        for tool in tools
    ]


def requested_events(
    calls: Sequence[ToolCall], turn_id: str, skip_permission: Collection[str]
) -> list[SessionEvent]:
    """The start of each of ``calls``, in the model's order, and then its
    permission request (a tool not in ``skip_permission``) or its request
    to a client."""
    events = []
    for call in calls:
        fields = {
            "tool_call_id": call.call_id,
            "tool_name": call.name,
            "arguments_json": call.arguments_json,
            "turn_id": turn_id,
        }
        events.append(ev.make_event(ev.TOOL_EXECUTION_START, **fields))
        if call.name in skip_permission:
            events.append(ev.make_event(ev.EXTERNAL_TOOL_REQUESTED, **fields))
        else:
            events.append(ev.make_event(ev.PERMISSION_REQUESTED, request_id=call.call_id, **fields))
    return events


def external_request_event(call: ToolCall, turn_id: str) -> SessionEvent:
    return ev.make_event(
        ev.EXTERNAL_TOOL_REQUESTED,
        tool_call_id=call.call_id,
        tool_name=call.name,
        arguments_json=call.arguments_json,
        turn_id=turn_id,
    )


def permission_completed_event(
    call_id: str, turn_id: str, *, approved: bool, reason: str
) -> SessionEvent:
    return ev.make_event(
        ev.PERMISSION_COMPLETED,
        request_id=call_id,
        tool_call_id=call_id,
        approved=approved,
        reason=reason,
        turn_id=turn_id,
    )


def denied_result(reason: str) -> ToolResult:
    text = f"permission denied: {reason}" if reason else "permission denied"
    return ToolResult(text_result_for_llm=text, result_type="denied", error=text)


def complete_event(call: ToolCall, turn_id: str, result: ToolResult) -> SessionEvent:
    return ev.make_event(
        ev.TOOL_EXECUTION_COMPLETE,
        tool_call_id=call.call_id,
        tool_name=call.name,
        success=result.result_type in ("", "success"),
        result=result,
        turn_id=turn_id,
    )


def interrupted_result(why: str = "", result_type: str = "failure") -> ToolResult:
    text = f"{INTERRUPTED_RESULT} ({why})" if why else INTERRUPTED_RESULT
    return ToolResult(text_result_for_llm=text, result_type=result_type, error=text)


def interrupted_completes(
    pending: Iterable[copilot_pb2.PendingToolCall], turn_id: str, why: str
) -> list[SessionEvent]:
    """Synthetic results for recorded calls that nobody will answer any more
    (an open permission request is denied first)."""
    result = interrupted_result(why)
    events = []
    for call in pending:
        if call.awaiting_permission:
            events.append(
                permission_completed_event(
                    call.tool_call_id, turn_id, approved=False, reason=result.text_result_for_llm
                )
            )
        tool_call = ToolCall(call.tool_call_id, call.tool_name, call.arguments_json)
        events.append(complete_event(tool_call, turn_id, result))
    return events
