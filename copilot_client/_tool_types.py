"""The tools and waiting calls a session's metadata lists, and the timestamps of
every type the client converts (here, below ``_types``, so both use them)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from .proto.v1 import copilot_pb2, events_pb2

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def datetime_of(stamp: Timestamp) -> datetime:
    # What stamp.ToDatetime(tzinfo=UTC) gives (nanoseconds truncated to
    # microseconds), in a fifth of the time: listings convert two per session.
    return EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def _json_object(text: str) -> dict[str, Any] | None:
    """JSON text that should hold an object, as a dict; None when empty or not one."""
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, kw_only=True)
class ToolDeclaration:
    """A tool as the session declares it (``SessionMetadata.tools``)."""

    name: str
    description: str
    parameters: dict[str, Any] | None
    """Its arguments' JSON schema; ``None`` when it takes none."""
    skip_permission: bool
    is_terminal: bool
    has_handler: bool
    """Declared by a client running it with a handler: the model is offered it
    only while such a client is attached. False: answered by hand
    (``handle_pending_tool_call``), always offered."""

    @classmethod
    def from_proto(cls, proto: events_pb2.ToolDefinition) -> ToolDeclaration:
        return cls(
            name=proto.name,
            description=proto.description,
            parameters=_json_object(proto.parameters_json_schema),
            skip_permission=proto.skip_permission,
            is_terminal=proto.is_terminal,
            has_handler=proto.has_handler,
        )


@dataclass(frozen=True, kw_only=True)
class PendingToolCall:
    """A tool call of the open turn waiting for an answer (``SessionMetadata``)."""

    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any]
    """The arguments the model gave, parsed from JSON (``{}`` if they are not an object)."""
    turn_id: str
    requested_time: datetime
    awaiting_permission: bool
    """It waits for a permission decision before its result can be given."""

    @classmethod
    def from_proto(cls, proto: copilot_pb2.PendingToolCall) -> PendingToolCall:
        return cls(
            tool_call_id=proto.tool_call_id,
            tool_name=proto.tool_name,
            arguments=_json_object(proto.arguments_json) or {},
            turn_id=proto.turn_id,
            requested_time=datetime_of(proto.requested_time),
            awaiting_permission=proto.awaiting_permission,
        )
