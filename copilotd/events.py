"""Event type names and constructors: the vocabulary of a session's log.

Names follow the GitHub Copilot SDK so that its documentation carries over.
"""

from __future__ import annotations

import time
from random import getrandbits
from typing import Any, Final

from google.protobuf.timestamp_pb2 import Timestamp

from copilot_client.proto.v1 import copilot_pb2, events_pb2

SessionEvent = events_pb2.SessionEvent
SessionMetadata = copilot_pb2.SessionMetadata
TurnEndReason = events_pb2.TurnEndReason

SESSION_START: Final = "session.start"
SESSION_RESUME: Final = "session.resume"
USER_MESSAGE: Final = "user.message"
ASSISTANT_TURN_START: Final = "assistant.turn_start"
ASSISTANT_MESSAGE: Final = "assistant.message"
ASSISTANT_MESSAGE_DELTA: Final = "assistant.message_delta"
ASSISTANT_TURN_END: Final = "assistant.turn_end"
SESSION_IDLE: Final = "session.idle"
SESSION_ERROR: Final = "session.error"
ABORT: Final = "abort"
PENDING_MESSAGES_MODIFIED: Final = "pending_messages.modified"
SESSION_DELETED: Final = "session.deleted"
ASSISTANT_USAGE: Final = "assistant.usage"
SESSION_MODEL_CHANGE: Final = "session.model_change"
SESSION_TRUNCATION: Final = "session.truncation"
TOOL_EXECUTION_START: Final = "tool.execution_start"
TOOL_EXECUTION_COMPLETE: Final = "tool.execution_complete"
EXTERNAL_TOOL_REQUESTED: Final = "external_tool.requested"
PERMISSION_REQUESTED: Final = "permission.requested"
PERMISSION_COMPLETED: Final = "permission.completed"
SESSION_COMPACTION_START: Final = "session.compaction_start"
SESSION_COMPACTION_COMPLETE: Final = "session.compaction_complete"
SESSION_SNAPSHOT_REWIND: Final = "session.snapshot_rewind"
SESSION_FORK: Final = "session.fork"
EXTERNAL_TOOL_ASSIGNED: Final = "external_tool.assigned"
PERMISSION_ASSIGNED: Final = "permission.assigned"

# Event type -> name of the payload field in the SessionEvent.data oneof.
PAYLOAD_FIELD: Final[dict[str, str]] = {
    SESSION_START: "session_start",
    SESSION_RESUME: "session_resume",
    USER_MESSAGE: "user_message",
    ASSISTANT_TURN_START: "assistant_turn_start",
    ASSISTANT_MESSAGE: "assistant_message",
    ASSISTANT_MESSAGE_DELTA: "assistant_message_delta",
    ASSISTANT_TURN_END: "assistant_turn_end",
    SESSION_IDLE: "session_idle",
    SESSION_ERROR: "session_error",
    ABORT: "abort",
    PENDING_MESSAGES_MODIFIED: "pending_messages_modified",
    SESSION_DELETED: "session_deleted",
    ASSISTANT_USAGE: "assistant_usage",
    SESSION_MODEL_CHANGE: "session_model_change",
    SESSION_TRUNCATION: "session_truncation",
    TOOL_EXECUTION_START: "tool_execution_start",
    TOOL_EXECUTION_COMPLETE: "tool_execution_complete",
    EXTERNAL_TOOL_REQUESTED: "external_tool_requested",
    PERMISSION_REQUESTED: "permission_requested",
    PERMISSION_COMPLETED: "permission_completed",
    SESSION_COMPACTION_START: "session_compaction_start",
    SESSION_COMPACTION_COMPLETE: "session_compaction_complete",
    SESSION_SNAPSHOT_REWIND: "session_snapshot_rewind",
    SESSION_FORK: "session_fork",
    EXTERNAL_TOOL_ASSIGNED: "external_tool_assigned",
    PERMISSION_ASSIGNED: "permission_assigned",
}

# Sent on one client's stream only (never published to every subscriber).
ASSIGNMENT_TYPES: Final = frozenset({EXTERNAL_TOOL_ASSIGNED, PERMISSION_ASSIGNED})
EPHEMERAL_TYPES: Final = frozenset(
    {ASSISTANT_MESSAGE_DELTA, SESSION_IDLE, PENDING_MESSAGES_MODIFIED, SESSION_DELETED}
    | ASSIGNMENT_TYPES
)
MESSAGE_TYPES: Final = frozenset({USER_MESSAGE, ASSISTANT_MESSAGE})

SUMMARY_MAX_CHARS: Final = 80
# Version 4 and the RFC 4122 variant, in a 128-bit UUID.
_UUID4_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET: Final = (0x4000 << 64) | (0x8000 << 48)


def new_id() -> str:
    """A random (version 4) UUID, as text.

    Made from ``random.getrandbits`` rather than ``uuid.uuid4()``: ids need to
    be unique, not unguessable, and a turn makes about ten of them, so the
    system call and the ``UUID`` object per id showed up in profiles. The
    generator is seeded from the OS and reseeded in forked children.
    """
    text = f"{getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def now_timestamp() -> Timestamp:
    stamp = Timestamp()
    # Not GetCurrentTime(): it goes through datetime, several times slower.
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def make_event(event_type: str, **payload: Any) -> SessionEvent:
    """A new event of ``event_type`` with a fresh id and the current time.

    Sequence number and parent id are left unset: the store assigns them when
    it appends the event (ephemeral events get them from the session's state).
    """
    # The payload as a dict in one constructor call (an empty one still sets
    # the oneof) and the time set in place: a turn makes about ten events.
    data: dict[str, Any] = {PAYLOAD_FIELD[event_type]: payload}
    event = SessionEvent(
        id=new_id(), type=event_type, ephemeral=event_type in EPHEMERAL_TYPES, **data
    )
    event.timestamp.FromNanoseconds(time.time_ns())
    return event


def completed_compaction(event: SessionEvent) -> bool:
    """Whether ``event`` is a compaction whose summary the model's context uses.

    Only a successful ``session.compaction_complete`` counts: a start alone
    (its daemon was killed, or it was aborted) or a failure changes nothing.
    """
    return event.type == SESSION_COMPACTION_COMPLETE and event.session_compaction_complete.success


def searchable_text(event: SessionEvent) -> str | None:
    """The text of ``event`` that search finds (both search engines), or None for events
    it does not index."""
    if event.type == USER_MESSAGE:
        return event.user_message.content
    if event.type == ASSISTANT_MESSAGE:
        return event.assistant_message.content
    if event.type == TOOL_EXECUTION_COMPLETE:
        return event.tool_execution_complete.result.text_result_for_llm
    return None


def summarize(prompt: str) -> str:
    """The first prompt, shortened to one line for listings."""
    line = " ".join(prompt.split())
    if len(line) <= SUMMARY_MAX_CHARS:
        return line
    return line[: SUMMARY_MAX_CHARS - 1].rstrip() + "…"


def apply_to_metadata(metadata: SessionMetadata, event: SessionEvent) -> None:
    """Keep listing metadata current as a persisted ``event`` is appended."""
    metadata.last_sequence = event.sequence
    metadata.last_event_id = event.id
    metadata.modified_time.CopyFrom(event.timestamp)
    if event.type in MESSAGE_TYPES:
        metadata.message_count += 1
    if event.type == USER_MESSAGE and not metadata.summary:
        metadata.summary = summarize(event.user_message.content)
    elif event.type == ASSISTANT_USAGE:
        metadata.input_tokens += event.assistant_usage.input_tokens
        metadata.output_tokens += event.assistant_usage.output_tokens
    elif event.type == SESSION_MODEL_CHANGE:
        metadata.model = event.session_model_change.new_model
    elif event.type == SESSION_RESUME and event.session_resume.HasField("provider"):
        metadata.provider.CopyFrom(event.session_resume.provider)
    elif event.type == SESSION_COMPACTION_COMPLETE:
        complete = event.session_compaction_complete
        metadata.compaction_count += complete.success
        # A compaction's model calls are the session's too, failed or not.
        metadata.input_tokens += complete.compaction_tokens_used.input_tokens
        metadata.output_tokens += complete.compaction_tokens_used.output_tokens
    if event.type == SESSION_RESUME and event.session_resume.HasField("infinite_sessions"):
        metadata.infinite_sessions.CopyFrom(event.session_resume.infinite_sessions)
    if event.type == SESSION_RESUME and event.session_resume.tools_replaced:
        del metadata.tools[:]
        metadata.tools.extend(event.session_resume.tools)
    elif event.type == TOOL_EXECUTION_START:
        # Open until its result is recorded: the durable list of calls a
        # restarted daemon keeps waiting for.
        start = event.tool_execution_start
        metadata.pending_tool_calls.add(
            tool_call_id=start.tool_call_id,
            tool_name=start.tool_name,
            arguments_json=start.arguments_json,
            turn_id=start.turn_id,
            requested_time=event.timestamp,
        )
    elif event.type in (PERMISSION_REQUESTED, PERMISSION_COMPLETED):
        # Durable like the call itself: a restarted daemon waits for the decision.
        call_id = (
            event.permission_requested.tool_call_id
            if event.type == PERMISSION_REQUESTED
            else event.permission_completed.tool_call_id
        )
        for call in metadata.pending_tool_calls:
            if call.tool_call_id == call_id:
                call.awaiting_permission = event.type == PERMISSION_REQUESTED
                break
    elif event.type == TOOL_EXECUTION_COMPLETE:
        call_id = event.tool_execution_complete.tool_call_id
        calls = metadata.pending_tool_calls
        for index, call in enumerate(calls):
            if call.tool_call_id == call_id:
                del calls[index]
                break
