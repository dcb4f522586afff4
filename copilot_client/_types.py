"""Configuration and metadata types, and their conversion from protobuf."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ._compaction import InfiniteSessionConfig
from ._models import ProviderConfig
from ._tool_types import PendingToolCall, ToolDeclaration, datetime_of
from .proto.v1 import copilot_pb2

if TYPE_CHECKING:  # _tools imports this module
    from ._permissions import PermissionHandlerFunc
    from ._tools import Tool

__all__ = [
    "LifecycleEvent",
    "MessageOptions",
    "SessionConfig",
    "SessionListPage",
    "SessionMetadata",
    "SystemMessageConfig",
]

SystemMessageMode = Literal["append", "replace"]
SendMode = Literal["enqueue", "immediate"]
_SendRequest = TypeVar(
    "_SendRequest", copilot_pb2.SendMessageRequest, copilot_pb2.SendMessageAndWaitRequest
)
_SEND_MODES: dict[str, copilot_pb2.SendMode.ValueType] = {
    "enqueue": copilot_pb2.SEND_MODE_ENQUEUE,
    "immediate": copilot_pb2.SEND_MODE_IMMEDIATE,
}

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

    def to_request(
        self, session_id: str, message_id: str, kind: type[_SendRequest]
    ) -> _SendRequest:
        """The SendMessage or SendMessageAndWait request (they have the same fields)."""
        request = kind(
            session_id=session_id,
            prompt=self.prompt,
            source=self.source or "",
            mode=_SEND_MODES[self.mode],
            message_id=message_id,
        )
        if self.expected_last_sequence is not None:
            request.expected_last_sequence = self.expected_last_sequence
        return request


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
    parent_session_id: str | None = None
    """A fork's parent (:meth:`CopilotClient.fork_session`; it may have been
    deleted since); ``None`` for a session that is not a fork."""

    fork_sequence: int = 0
    """A fork's last inherited event (0 for a session that is not a fork)."""

    rewound_events: int = 0
    """Events cut by rewinds (:meth:`CopilotSession.rewind`), in all."""

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
            parent_session_id=proto.parent_session_id or None,
            fork_sequence=proto.fork_sequence,
            rewound_events=proto.rewound_events,
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

    rewound: bool = False
    """The event was cut by a rewind (found only with ``include_rewound=True``)."""

    @classmethod
    def from_proto(cls, proto: copilot_pb2.SearchHit) -> SearchHit:
        return cls(
            session_id=proto.session_id,
            sequence=proto.sequence,
            event_type=proto.event_type,
            event_time=datetime_of(proto.event_time),
            snippet=proto.snippet,
            rank=proto.rank,
            rewound=proto.rewound,
        )


@dataclass(frozen=True, kw_only=True)
class SearchPage:
    """One page of :meth:`CopilotClient.search_sessions`."""

    hits: list[SearchHit]
    """Best match first."""

    next_page_token: str | None
    """Token for the next page (same query and filters); ``None`` on the last page."""


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
