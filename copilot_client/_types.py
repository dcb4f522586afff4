"""Configuration, metadata and event types, and their conversion from protobuf."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from google.protobuf.message import Message

from ._compaction import InfiniteSessionConfig, trigger_name
from ._models import ProviderConfig
from ._tool_types import PendingToolCall, ToolDeclaration, datetime_of
from .proto.v1 import copilot_pb2, events_pb2

if TYPE_CHECKING:  # _tools reads events of this module
    from ._permissions import PermissionHandlerFunc
    from ._tools import Tool

__all__ = [
    "EventData",
    "LifecycleEvent",
    "MessageOptions",
    "SessionConfig",
    "SessionEvent",
    "SessionEventType",
    "SessionListPage",
    "SessionMetadata",
    "SystemMessageConfig",
]

SystemMessageMode = Literal["append", "replace"]
SendMode = Literal["enqueue", "immediate"]

_MODES: dict[str, copilot_pb2.SystemMessageMode.ValueType] = {
    "append": copilot_pb2.SYSTEM_MESSAGE_MODE_APPEND,
    "replace": copilot_pb2.SYSTEM_MESSAGE_MODE_REPLACE,
}


@dataclass(frozen=True, kw_only=True)
class SystemMessageConfig:
    """A system message and how it combines with the daemon's built-in one."""

    content: str
    """The text of the system message."""

    mode: SystemMessageMode = "append"
    """``"append"`` adds it after the built-in message; ``"replace"`` uses it alone."""

    @classmethod
    def coerce(cls, value: str | SystemMessageConfig | Mapping[str, Any]) -> SystemMessageConfig:
        """A config from any accepted form: text (appended), a config, or a dict.

        Raises:
            ValueError: For a dict without ``content`` or with an unknown ``mode``.
            TypeError: For any other type.
        """
        if isinstance(value, SystemMessageConfig):
            config = value
        elif isinstance(value, str):
            config = cls(content=value)
        elif isinstance(value, Mapping):
            unknown = set(value) - {"content", "mode"}
            if unknown:
                raise ValueError(f"unknown system_message keys: {sorted(unknown)}")
            if "content" not in value:
                raise ValueError('system_message dict needs a "content" key')
            config = cls(content=str(value["content"]), mode=value.get("mode") or "append")
        else:
            raise TypeError(
                f"system_message must be a str, SystemMessageConfig or dict, not {type(value)}"
            )
        if config.mode not in _MODES:
            raise ValueError(
                f'system_message mode must be "append" or "replace", not {config.mode!r}'
            )
        return config

    def to_proto(self) -> copilot_pb2.SystemMessage:
        """The wire form."""
        return copilot_pb2.SystemMessage(content=self.content, mode=_MODES[self.mode])


@dataclass(kw_only=True)
class SessionConfig:
    """What a session is created with. Every field is optional."""

    session_id: str | None = None
    """The session's id (1-128 characters from ``[A-Za-z0-9._:@-]``, starting
    with a letter or digit); ``None`` lets the daemon generate a UUID."""

    model: str | None = None
    """The model to answer with; ``None`` for the daemon's default."""

    system_message: str | SystemMessageConfig | Mapping[str, Any] | None = None
    """Extra instructions: text (appended to the built-in system message), a
    :class:`SystemMessageConfig`, or a dict ``{"content": ..., "mode":
    "append" | "replace"}`` as in the Copilot SDK."""

    streaming: bool = True
    """Accepted for Copilot SDK compatibility: deltas are always streamed."""

    provider: ProviderConfig | Mapping[str, Any] | None = None
    """The session's own model provider (bring your own key): a
    :class:`ProviderConfig` or a dict like the Copilot SDK's. ``None``: the
    daemon's configured providers."""

    tools: Sequence[Tool] = ()
    """Tools the model may call; this session runs the calls of those with a
    handler (see :class:`Tool`)."""

    on_permission_request: PermissionHandlerFunc | None = None
    """Decides whether a call of a tool declared without ``skip_permission``
    may run (e.g. ``PermissionHandler.approve_all``); ``None`` denies them."""

    infinite_sessions: InfiniteSessionConfig | Mapping[str, Any] | None = None
    """Automatic compaction of the conversation as it grows (see
    :class:`InfiniteSessionConfig`); ``None``: off."""

    def to_proto(self) -> copilot_pb2.SessionConfig:
        """The wire form.

        Raises:
            ValueError: When ``system_message`` is malformed.
        """
        proto = copilot_pb2.SessionConfig(session_id=self.session_id or "", model=self.model or "")
        if self.system_message is not None:
            proto.system_message.CopyFrom(
                SystemMessageConfig.coerce(self.system_message).to_proto()
            )
        if self.provider is not None:
            proto.provider.CopyFrom(ProviderConfig.coerce(self.provider).to_proto())
        proto.tools.extend(tool.to_proto() for tool in self.tools)
        if self.infinite_sessions is not None:
            infinite = InfiniteSessionConfig.coerce(self.infinite_sessions)
            proto.infinite_sessions.CopyFrom(infinite.to_proto())
        return proto


@dataclass
class MessageOptions:
    """A message to send: ``MessageOptions("hi")`` or ``MessageOptions(prompt="hi")``."""

    prompt: str
    """The text to send (may be passed positionally)."""

    _: KW_ONLY

    source: str | None = None
    """A free-form tag of the sender (client name, process), stored with the message."""

    mode: SendMode = "enqueue"
    """While a turn runs: ``"enqueue"`` waits for it (turns run one at a time, in
    arrival order); ``"immediate"`` aborts it and runs this message next."""

    expected_last_sequence: int | None = None
    """When set, the daemon refuses the message (``SequenceConflictError``, nothing
    written) unless the session's last persisted sequence number is this one."""

    @classmethod
    def coerce(cls, value: MessageOptions | str | Mapping[str, Any]) -> MessageOptions:
        """Options from a :class:`MessageOptions`, a prompt, or a dict like the SDK's."""
        if isinstance(value, MessageOptions):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            return cls(
                str(value["prompt"]),
                source=value.get("source"),
                mode=value.get("mode", "enqueue"),
                expected_last_sequence=value.get("expected_last_sequence"),
            )
        raise TypeError(f"expected MessageOptions or str, not {type(value).__name__}")


@dataclass(frozen=True, kw_only=True)
class SessionMetadata:
    """What the daemon knows about a session without reading its events."""

    session_id: str
    """The session's id."""

    start_time: datetime
    """When it was created (aware, UTC)."""

    modified_time: datetime
    """When its last event was persisted (aware, UTC)."""

    summary: str | None
    """Its first prompt, shortened; ``None`` before any message."""

    model: str | None
    """The model it answers with; ``None`` when not recorded."""

    message_count: int
    """Number of ``user.message`` and ``assistant.message`` events."""

    last_sequence: int
    """Sequence number of its last persisted event."""

    turn_running: bool
    """Whether a turn was running when this was read."""

    pending_messages: int = 0
    """Messages waiting for their turn when this was read."""
    pinned: bool = False
    """Whether the session is pinned: retention never deletes it."""
    input_tokens: int = 0
    """Input tokens of all its model calls (sum of ``assistant.usage`` events)."""

    output_tokens: int = 0
    """Output tokens of all its model calls."""

    provider: ProviderConfig | None = None
    """Its own provider, secrets left out; ``None``: the daemon's configured ones."""

    tools: tuple[ToolDeclaration, ...] = ()
    """The tools it declares (on create, or by the last resume that gave tools)."""

    pending_tool_calls: tuple[PendingToolCall, ...] = ()
    """Calls of the open turn waiting for a result or a permission decision
    (durable: they outlive a daemon restart)."""
    infinite_sessions: InfiniteSessionConfig | None = None
    """Its compaction settings; ``None``: automatic compaction off."""
    compaction_count: int = 0
    """Compactions that completed so far."""

    @classmethod
    def from_proto(cls, proto: copilot_pb2.SessionMetadata) -> SessionMetadata:
        """Converts the wire form."""
        return cls(
            session_id=proto.session_id,
            start_time=datetime_of(proto.start_time),
            modified_time=datetime_of(proto.modified_time),
            summary=proto.summary or None,
            model=proto.model or None,
            message_count=proto.message_count,
            last_sequence=proto.last_sequence,
            turn_running=proto.turn_running,
            pending_messages=proto.pending_messages,
            pinned=proto.pinned,
            input_tokens=proto.input_tokens,
            output_tokens=proto.output_tokens,
            provider=ProviderConfig.from_proto(proto.provider),
            tools=tuple(ToolDeclaration.from_proto(tool) for tool in proto.tools),
            pending_tool_calls=tuple(
                PendingToolCall.from_proto(call) for call in proto.pending_tool_calls
            ),
            infinite_sessions=(
                InfiniteSessionConfig.from_proto(proto.infinite_sessions)
                if proto.HasField("infinite_sessions")
                else None
            ),
            compaction_count=proto.compaction_count,
        )


@dataclass(frozen=True, kw_only=True)
class SessionListPage:
    """One page of :meth:`CopilotClient.list_sessions_page`."""

    sessions: list[SessionMetadata]
    """Sessions, most recently active first."""

    next_page_token: str | None
    """Token for the next page; ``None`` on the last page."""


@dataclass(frozen=True, kw_only=True)
class SearchHit:
    """One event that matched :meth:`CopilotClient.search_sessions`."""

    session_id: str
    sequence: int
    """The event's sequence in its session (read it with ``get_messages`` or ``ListEvents``)."""

    event_type: str
    """``"user.message"``, ``"assistant.message"`` or ``"tool.execution_complete"``."""

    event_time: datetime
    snippet: str
    """An excerpt of the text, the matched words between ``[`` and ``]``."""

    rank: float
    """bm25: lower is a better match; comparable within one search only."""

    @classmethod
    def from_proto(cls, proto: copilot_pb2.SearchHit) -> SearchHit:
        return cls(
            session_id=proto.session_id,
            sequence=proto.sequence,
            event_type=proto.event_type,
            event_time=datetime_of(proto.event_time),
            snippet=proto.snippet,
            rank=proto.rank,
        )


@dataclass(frozen=True, kw_only=True)
class SearchPage:
    """One page of :meth:`CopilotClient.search_sessions`."""

    hits: list[SearchHit]
    """Best match first."""

    next_page_token: str | None
    """Token for the next page (same query and filters); ``None`` on the last page."""


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


@dataclass(frozen=True, kw_only=True)
class LifecycleEvent:
    """A session was created, deleted or updated, by whichever client."""

    type: str
    """``"session.created"``, ``"session.deleted"`` or ``"session.updated"``."""
    session_id: str
    """The session concerned."""
    metadata: SessionMetadata | None
    """Its metadata after the change; ``None`` for ``session.deleted``."""
    timestamp: datetime
    """When it happened (aware, UTC)."""

    @classmethod
    def from_proto(cls, proto: copilot_pb2.LifecycleEvent) -> LifecycleEvent:
        """Converts the wire form."""
        return cls(
            type=proto.type,
            session_id=proto.session_id,
            metadata=(
                SessionMetadata.from_proto(proto.metadata) if proto.HasField("metadata") else None
            ),
            timestamp=datetime_of(proto.timestamp),
        )
