"""Infinite sessions: the compaction settings of a session and what a compaction did.

Names follow the Copilot SDK (``InfiniteSessionConfig``,
``background_compaction_threshold``, ``buffer_exhaustion_threshold``); how
the daemon decides and what the model sees afterwards is in docs/client.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .proto.v1 import copilot_pb2, events_pb2
from .service import ServiceClient

CompactionTrigger = Literal["threshold", "exhaustion", "manual", "unspecified"]


@dataclass(frozen=True, kw_only=True)
class InfiniteSessionConfig:
    """Automatic compaction of a long conversation (the Copilot SDK's settings).

    Utilization is the estimated size of what the model is sent (system
    message, latest summary, the messages after it) over the model's prompt
    budget (its ``context_window`` less ``max_output_tokens`` in the daemon's
    config). With no window configured for the model, only
    :meth:`CopilotSession.compact` compacts.
    """

    enabled: bool = True
    """Whether the daemon compacts on its own (manual compaction works either way)."""

    background_compaction_threshold: float = 0.80
    """Utilization (above 0, below 1) at which a compaction starts in the
    background after a turn; turns go on meanwhile."""

    buffer_exhaustion_threshold: float = 0.95
    """Utilization (above 0, at most 1, at least the background threshold) at
    which the next model call waits for a compaction."""

    summary_max_tokens: int | None = None
    """Largest summary in estimated tokens (``None``: the daemon's 2048; it
    also keeps a summary under a quarter of the model's budget)."""

    @classmethod
    def coerce(cls, value: InfiniteSessionConfig | Mapping[str, Any]) -> InfiniteSessionConfig:
        """From an instance or a dict of the same keys (the Copilot SDK passes a dict)."""
        if isinstance(value, InfiniteSessionConfig):
            return value
        return cls(**dict(value))

    @classmethod
    def from_proto(cls, proto: events_pb2.InfiniteSessionConfig) -> InfiniteSessionConfig:
        """The wire form, the daemon's defaults filled in where it holds 0."""
        return cls(
            enabled=proto.enabled,
            background_compaction_threshold=proto.background_compaction_threshold or 0.80,
            buffer_exhaustion_threshold=proto.buffer_exhaustion_threshold or 0.95,
            summary_max_tokens=proto.summary_max_tokens or None,
        )

    def to_proto(self) -> events_pb2.InfiniteSessionConfig:
        return events_pb2.InfiniteSessionConfig(
            enabled=self.enabled,
            background_compaction_threshold=self.background_compaction_threshold,
            buffer_exhaustion_threshold=self.buffer_exhaustion_threshold,
            summary_max_tokens=self.summary_max_tokens or 0,
        )


def trigger_name(value: int) -> CompactionTrigger:
    """``CompactionTrigger`` on the wire as the Copilot SDK names it."""
    names: dict[int, CompactionTrigger] = {
        events_pb2.COMPACTION_TRIGGER_THRESHOLD: "threshold",
        events_pb2.COMPACTION_TRIGGER_EXHAUSTION: "exhaustion",
        events_pb2.COMPACTION_TRIGGER_MANUAL: "manual",
    }
    return names.get(value, "unspecified")


@dataclass(frozen=True, kw_only=True)
class CompactionResult:
    """What :meth:`CopilotSession.compact` did (from its ``session.compaction_complete``)."""

    success: bool
    """Always True here: a failed compaction raises instead."""
    trigger: CompactionTrigger
    """``"manual"``, or how the compaction it waited for had started."""
    summary_content: str
    """The summary the model now sees instead of the events it covers."""
    pre_compaction_tokens: int
    """Estimated tokens of the conversation before (system message aside)."""
    post_compaction_tokens: int
    """Estimated tokens after: the summary and the messages after its range."""
    tokens_removed: int
    """The difference."""
    messages_removed: int
    """Messages the summary replaced in the model's context (the log keeps them)."""
    from_sequence: int
    """First event this compaction summarised (the previous summary's
    ``up_to_sequence`` + 1, or 1); the summary carries the previous one, so it
    stands for every event up to ``up_to_sequence``."""
    up_to_sequence: int
    """Last event it covers; the model sees the events after this verbatim."""
    chunks: int
    """Model calls the summary took."""
    sequence: int
    """Sequence number of the ``session.compaction_complete`` event."""

    @classmethod
    def from_proto(cls, event: events_pb2.SessionEvent) -> CompactionResult:
        data = event.session_compaction_complete
        return cls(
            success=data.success,
            trigger=trigger_name(data.trigger),
            summary_content=data.summary_content,
            pre_compaction_tokens=data.pre_compaction_tokens,
            post_compaction_tokens=data.post_compaction_tokens,
            tokens_removed=data.tokens_removed,
            messages_removed=data.messages_removed,
            from_sequence=data.from_sequence,
            up_to_sequence=data.up_to_sequence,
            chunks=data.chunks,
            sequence=event.sequence,
        )


async def compact_session(
    transport: ServiceClient, session_id: str, custom_instructions: str | None, *, deadline: float
) -> CompactionResult:
    request = copilot_pb2.CompactSessionRequest(
        session_id=session_id, custom_instructions=custom_instructions or ""
    )
    response = await transport.call(transport.stub.CompactSession, request, deadline=deadline)
    return CompactionResult.from_proto(response.compaction_complete)
