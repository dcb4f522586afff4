"""Session events: their type names and payloads, converted from protobuf."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from google.protobuf.message import Message

from ._compaction import trigger_name
from ._tool_types import datetime_of
from .proto.v1 import events_pb2

__all__ = ["EventData", "SessionEvent", "SessionEventType"]


class SessionEventType(enum.StrEnum):
    """Event type names, as in the Copilot SDK. Names this client does not
    know become :attr:`UNKNOWN` (the raw name stays in ``SessionEvent.type_name``)."""

    SESSION_START = "session.start"
    SESSION_RESUME = "session.resume"
    USER_MESSAGE = "user.message"
    ASSISTANT_TURN_START = "assistant.turn_start"
    ASSISTANT_MESSAGE = "assistant.message"
    ASSISTANT_MESSAGE_DELTA = "assistant.message_delta"
    ASSISTANT_TURN_END = "assistant.turn_end"
    SESSION_IDLE = "session.idle"
    SESSION_ERROR = "session.error"
    ABORT = "abort"
    PENDING_MESSAGES_MODIFIED = "pending_messages.modified"
    SESSION_DELETED = "session.deleted"
    ASSISTANT_USAGE = "assistant.usage"
    SESSION_MODEL_CHANGE = "session.model_change"
    SESSION_TRUNCATION = "session.truncation"
    TOOL_EXECUTION_START = "tool.execution_start"
    TOOL_EXECUTION_COMPLETE = "tool.execution_complete"
    EXTERNAL_TOOL_REQUESTED = "external_tool.requested"
    PERMISSION_REQUESTED = "permission.requested"
    PERMISSION_COMPLETED = "permission.completed"
    EXTERNAL_TOOL_ASSIGNED = "external_tool.assigned"
    """Live-only, on one client's stream: that client is to run the call."""
    PERMISSION_ASSIGNED = "permission.assigned"
    """Live-only, on one client's stream: that client is to decide the request."""
    SESSION_COMPACTION_START = "session.compaction_start"
    SESSION_COMPACTION_COMPLETE = "session.compaction_complete"
    SESSION_SNAPSHOT_REWIND = "session.snapshot_rewind"
    SESSION_FORK = "session.fork"
    UNKNOWN = "unknown"

    @classmethod
    def _missing_(cls, value: object) -> SessionEventType:
        return cls.UNKNOWN


@dataclass(frozen=True, kw_only=True)
class EventData:
    """An event's payload. Fields an event type does not have are ``None``."""

    content: str | None = None
    """Text of a ``user.message`` or ``assistant.message``."""
    message_id: str | None = None
    """Id of the assistant message (``assistant.message``, deltas)."""
    delta_content: str | None = None
    """A streamed piece of text (``assistant.message_delta``)."""
    turn_id: str | None = None
    """The turn an event belongs to."""
    user_message_id: str | None = None
    """Id of the ``user.message`` the turn answers."""
    partial: bool | None = None
    """``assistant.message``: the text was cut short by an abort or failure."""
    model: str | None = None
    """The model (``session.start``, ``assistant.message``)."""
    reason: str | None = None
    """``assistant.turn_end``: ``"completed"``, ``"aborted"``, ``"error"`` or
    ``"interrupted"``; ``abort``: the free-text reason given."""
    message: str | None = None
    """Human-readable detail (``session.error``, ``assistant.turn_end``)."""
    error_type: str | None = None
    """``session.error``: category such as ``"provider"`` or ``"internal"``."""
    session_id: str | None = None
    """``session.start``: the session's id."""
    event_count: int | None = None
    """``session.resume``: number of persisted events before it."""
    already_in_use: bool | None = None
    """``session.resume``: another client was using the session at the time
    (attached to its events, or waiting for one of its turns)."""
    turn_running: bool | None = None
    """``session.resume``: a turn was running at the time."""
    source: str | None = None
    """``user.message``: free-form tag of the sender."""
    producer_version: str | None = None
    """``session.start``: version of copilotd that created the session."""
    message_ids: tuple[str, ...] | None = None
    """``pending_messages.modified``: ids of the queued messages, in running order."""
    status_code: int | None = None
    """``session.error``: the provider's HTTP status; ``None`` when it gave none."""
    attempts: int | None = None
    """``session.error``: times the provider was tried, retries included; ``None``
    for failures that are not the provider's."""
    input_tokens: int | None = None
    """``assistant.usage``: input (prompt) tokens of the model call."""
    output_tokens: int | None = None
    """``assistant.usage``: output tokens of the model call."""
    cache_read_tokens: int | None = None
    """``assistant.usage``: input tokens served from the provider's cache."""
    cache_write_tokens: int | None = None
    """``assistant.usage``: input tokens written to the provider's cache."""
    duration_ms: int | None = None
    """``assistant.usage``: from the request to the end of the answer, retries included."""
    provider_call_id: str | None = None
    """``assistant.usage``: the provider's id of the response."""
    estimated: bool | None = None
    """``assistant.usage``: the provider reported no usage; the counts are estimates."""
    previous_model: str | None = None
    """``session.model_change``: the model before."""
    new_model: str | None = None
    """``session.model_change``: the model of the next turns."""
    token_limit: int | None = None
    """``session.truncation``: the budget for the request's messages, in tokens."""
    pre_truncation_tokens: int | None = None
    """``session.truncation``: estimated tokens of the whole history."""
    pre_truncation_messages: int | None = None
    """``session.truncation``: messages in the whole history (system message included)."""
    post_truncation_tokens: int | None = None
    """``session.truncation``: estimated tokens of what was sent."""
    post_truncation_messages: int | None = None
    """``session.truncation``: messages sent."""
    tokens_removed: int | None = None
    """``session.truncation``: estimated tokens left out."""
    messages_removed: int | None = None
    """``session.truncation``: messages left out (the oldest)."""
    first_kept_sequence: int | None = None
    """``session.truncation``: the messages before this sequence number were left out."""
    tool_call_id: str | None = None
    """The tool call (``tool.execution_start``, ``external_tool.requested``,
    ``tool.execution_complete``)."""
    tool_name: str | None = None
    """The tool called (the same events)."""
    arguments_json: str | None = None
    """The call's arguments as JSON text (``tool.execution_start``, ``external_tool.requested``)."""
    success: bool | None = None
    """``tool.execution_complete``: the result is a success."""
    result_text: str | None = None
    """``tool.execution_complete``: the result as the model is told it."""
    result_type: str | None = None
    """``tool.execution_complete``: ``"success"``, ``"failure"``, ``"rejected"``,
    ``"denied"`` or ``"timeout"``."""
    compaction_id: str | None = None
    """``session.compaction_start`` and ``_complete``: pairs them."""
    trigger: str | None = None
    """The same: ``"threshold"``, ``"exhaustion"`` or ``"manual"``."""
    current_tokens: int | None = None
    """``session.compaction_start``: estimated tokens of the context."""
    from_sequence: int | None = None
    """Compaction events: the first event the summary covers."""
    up_to_sequence: int | None = None
    """Compaction events: the last event the summary covers."""
    custom_instructions: str | None = None
    """Compaction events: what ``compact()`` was asked to keep."""
    error: str | None = None
    """``session.compaction_complete``: why it failed (``success`` False)."""
    pre_compaction_tokens: int | None = None
    """``session.compaction_complete``: estimated tokens before."""
    post_compaction_tokens: int | None = None
    """``session.compaction_complete``: estimated tokens after."""
    pre_compaction_messages_length: int | None = None
    """``session.compaction_complete``: messages in the context before."""
    summary_content: str | None = None
    """``session.compaction_complete``: the summary the model sees from then on."""
    chunks: int | None = None
    """``session.compaction_complete``: model calls the summary took."""
    up_to_event_id: str | None = None
    """``session.snapshot_rewind``: id of the last event kept."""
    events_removed: int | None = None
    """``session.snapshot_rewind``: events this rewind cut."""
    to_sequence: int | None = None
    """``session.snapshot_rewind``: the sequence rewound to (the last event kept)."""
    first_rewound_sequence: int | None = None
    """``session.snapshot_rewind``: the first event cut."""
    last_rewound_sequence: int | None = None
    """``session.snapshot_rewind``: the last event cut."""
    parent_session_id: str | None = None
    """``session.fork``: the session forked."""
    fork_sequence: int | None = None
    """``session.fork``: the last event inherited from the parent."""
    parent_event_id: str | None = None
    """``session.fork``: id of that event."""


# Text bodies keep "" (an answer can be empty); other empty strings mean "unset".
_TEXT_FIELDS = frozenset({"content", "delta_content"})
_SCALAR_FIELDS = frozenset(EventData.__dataclass_fields__)


def _event_data(proto: events_pb2.SessionEvent) -> EventData:
    member = proto.WhichOneof("data")
    if member is None:
        return EventData()
    payload = getattr(proto, member)
    values: dict[str, Any] = {}
    for name, repeated, has_presence in _payload_fields(payload):
        if has_presence and not payload.HasField(name):
            continue  # an optional field left unset: None
        value = getattr(payload, name)
        if repeated:
            value = tuple(value)
        elif isinstance(value, str) and not value and name not in _TEXT_FIELDS:
            value = None
        values[name] = value
    if member == "assistant_turn_end":
        values["reason"] = (
            events_pb2.TurnEndReason.Name(payload.reason).removeprefix("TURN_END_REASON_").lower()
            if payload.reason in _TURN_END_REASONS
            else str(payload.reason)
        )
    if member in ("session_compaction_start", "session_compaction_complete"):
        values["trigger"] = trigger_name(payload.trigger)
    if member == "tool_execution_complete":
        values["result_text"] = payload.result.text_result_for_llm
        values["result_type"] = payload.result.result_type or "success"
    return EventData(**values)


# Every event received goes through _event_data: look each payload type's
# fields up once.
_FIELDS_BY_PAYLOAD: dict[str, tuple[tuple[str, bool, bool], ...]] = {}
_TURN_END_REASONS = frozenset(events_pb2.TurnEndReason.values())


def _payload_fields(payload: Message) -> tuple[tuple[str, bool, bool], ...]:
    """(name, is repeated, has presence) of the payload's fields that EventData has."""
    descriptor = payload.DESCRIPTOR
    fields = _FIELDS_BY_PAYLOAD.get(descriptor.full_name)
    if fields is None:
        fields = tuple(
            (f.name, f.is_repeated, f.has_presence)
            for f in descriptor.fields
            if f.name in _SCALAR_FIELDS
        )
        _FIELDS_BY_PAYLOAD[descriptor.full_name] = fields
    return fields


@dataclass(frozen=True, kw_only=True)
class SessionEvent:
    """One event of a session's log, or a live-only (ephemeral) one."""

    id: str
    """Unique id (for a ``user.message``: the message id ``send()`` returned)."""
    type: SessionEventType
    """The kind of event; :attr:`SessionEventType.UNKNOWN` for new kinds."""
    type_name: str
    """The raw type name from the wire, kept for unknown kinds."""
    sequence: int
    """Session-local sequence number; for ephemeral events that of the last
    persisted event."""
    timestamp: datetime
    """When the event happened (aware, UTC)."""
    parent_id: str | None
    """Id of the previous persisted event; ``None`` for the first."""
    ephemeral: bool
    """True for live-only events that are never stored."""
    data: EventData
    """The payload."""
    proto: events_pb2.SessionEvent = field(repr=False, compare=False)
    """The event as received."""

    @classmethod
    def from_proto(cls, proto: events_pb2.SessionEvent) -> SessionEvent:
        """Converts the wire form; never fails on unknown types or payloads."""
        return cls(
            id=proto.id,
            type=SessionEventType(proto.type),
            type_name=proto.type,
            sequence=proto.sequence,
            timestamp=datetime_of(proto.timestamp),
            parent_id=proto.parent_id or None,
            ephemeral=proto.ephemeral,
            data=_event_data(proto),
            proto=proto,
        )
