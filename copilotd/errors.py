"""The catalog of the daemon's domain errors, free of any transport.

Every error the core raises on purpose is a ``ServiceError`` carrying a
status (the name of a standard ``google.rpc.Code``, the same in every gRPC
language), an ``ErrorReason`` and a message a person can act on, plus
``metadata`` that helps the caller recover. ``copilotd.api.errors`` is the
one place these become gRPC statuses; anything else becomes INTERNAL there,
with details in the log only.
"""

from __future__ import annotations

from typing import Literal

from copilot_client.proto.v1 import copilot_pb2
from copilot_client.wire import ERROR_INFO_CURRENT_SEQUENCE

Reason = copilot_pb2.ErrorReason
# The google.rpc.Code names the catalog uses (a subset of the standard ones).
StatusName = Literal[
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "INTERNAL",
]


class ServiceError(Exception):
    status: StatusName = "INTERNAL"
    reason: Reason.ValueType = Reason.ERROR_REASON_INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # ErrorInfo metadata (keys in copilot_client.wire) that helps the caller recover.
        self.metadata: dict[str, str] = {}


class SessionNotFoundError(ServiceError):
    status: StatusName = "NOT_FOUND"
    reason = Reason.ERROR_REASON_SESSION_NOT_FOUND

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"no session with id {session_id!r}; list the existing ones with ListSessions "
            "or create it with CreateSession"
        )


class SessionExistsError(ServiceError):
    status: StatusName = "ALREADY_EXISTS"
    reason = Reason.ERROR_REASON_SESSION_EXISTS

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"a session with id {session_id!r} already exists; resume it, delete it first, "
            "or choose another id"
        )


class InvalidArgumentError(ServiceError):
    status: StatusName = "INVALID_ARGUMENT"
    reason = Reason.ERROR_REASON_INVALID_ARGUMENT

    def __init__(
        self, message: str, reason: Reason.ValueType = Reason.ERROR_REASON_INVALID_ARGUMENT
    ) -> None:
        super().__init__(message)
        self.reason = reason


class FailedPreconditionError(ServiceError):
    """The session is not in a state that allows the call; ``reason`` says why."""

    status: StatusName = "FAILED_PRECONDITION"

    def __init__(self, message: str, reason: Reason.ValueType) -> None:
        super().__init__(message)
        self.reason = reason


class SequenceConflictError(ServiceError):
    status: StatusName = "FAILED_PRECONDITION"
    reason = Reason.ERROR_REASON_SEQUENCE_CONFLICT

    def __init__(self, session_id: str, expected: int, current: int) -> None:
        super().__init__(
            f"session {session_id!r} has moved on to sequence {current} (you expected "
            f"{expected}); nothing was written: read the new events and send again"
        )
        self.metadata[ERROR_INFO_CURRENT_SEQUENCE] = str(current)


class MessageAlreadyAnsweredError(ServiceError):
    status: StatusName = "ALREADY_EXISTS"
    reason = Reason.ERROR_REASON_MESSAGE_ALREADY_ANSWERED

    def __init__(self, session_id: str, message_id: str) -> None:
        super().__init__(
            f"message {message_id!r} of session {session_id!r} was already sent and its turn "
            "has ended; read its answer with ListEvents, or send a new message with a new id"
        )


class MessageIdTakenError(InvalidArgumentError):
    """A client-chosen message id that names another event of the session."""

    def __init__(self, session_id: str, message_id: str, event_type: str = "") -> None:
        what = f"a {event_type} event" if event_type else "another event"
        super().__init__(
            f"message_id {message_id!r} is already the id of {what} in session "
            f"{session_id!r}; event ids are unique, so choose another message id (or leave it "
            "empty to let copilotd choose one)"
        )


class TurnBusyError(ServiceError):
    """Another daemon runs the session's turn (the scheduler queues the message instead)."""

    status: StatusName = "UNAVAILABLE"


class TurnTakenOverError(ServiceError):
    """This daemon's lease on a turn expired and another daemon closed the turn."""

    status: StatusName = "UNAVAILABLE"

    def __init__(self, session_id: str, turn_id: str) -> None:
        super().__init__(
            f"turn {turn_id!r} of session {session_id!r} was taken over by another daemon "
            "(this one stopped renewing its lease in time) and closed as interrupted; "
            "read the session's events for its end, or send the message again"
        )


class StoreFullError(ServiceError):
    status: StatusName = "RESOURCE_EXHAUSTED"
    reason = Reason.ERROR_REASON_STORE_FULL


class SubscriberTooSlowError(ServiceError):
    status: StatusName = "RESOURCE_EXHAUSTED"
    reason = Reason.ERROR_REASON_SUBSCRIBER_TOO_SLOW


class ShuttingDownError(ServiceError):
    status: StatusName = "UNAVAILABLE"
    reason = Reason.ERROR_REASON_SHUTTING_DOWN

    def __init__(self) -> None:
        super().__init__("copilotd is shutting down; retry once it is back")


# -- administration ----------------------------------------------------------


class InvalidImportError(InvalidArgumentError):
    """An imported history is not complete and in order; the message says where."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Reason.ERROR_REASON_INVALID_IMPORT)


class BackupUnsupportedError(ServiceError):
    status: StatusName = "FAILED_PRECONDITION"
    reason = Reason.ERROR_REASON_BACKUP_UNSUPPORTED


class NoRetentionPolicyError(ServiceError):
    status: StatusName = "FAILED_PRECONDITION"
    reason = Reason.ERROR_REASON_NO_RETENTION_POLICY

    def __init__(self) -> None:
        super().__init__(
            "no retention rule was given and the daemon has no [retention] policy configured; "
            "give older_than and/or keep, or configure [retention] in the config file"
        )


class UnknownToolCallError(ServiceError):
    status: StatusName = "NOT_FOUND"
    reason = Reason.ERROR_REASON_UNKNOWN_TOOL_CALL

    def __init__(self, session_id: str, tool_call_id: str) -> None:
        super().__init__(
            f"session {session_id!r} has no tool call {tool_call_id!r} waiting for a result; "
            "ListPendingToolCalls lists the open ones (a call closed by an abort or a timeout "
            "takes no result)"
        )


class ToolCallAnsweredError(ServiceError):
    status: StatusName = "ALREADY_EXISTS"
    reason = Reason.ERROR_REASON_TOOL_CALL_ANSWERED

    def __init__(self, session_id: str, tool_call_id: str) -> None:
        super().__init__(
            f"tool call {tool_call_id!r} of session {session_id!r} already has a different "
            "result (the first result recorded wins); read it in its tool.execution_complete "
            "event"
        )


class UnknownPermissionRequestError(ServiceError):
    status: StatusName = "NOT_FOUND"
    reason = Reason.ERROR_REASON_UNKNOWN_PERMISSION_REQUEST

    def __init__(self, session_id: str, request_id: str) -> None:
        super().__init__(
            f"session {session_id!r} has no permission request {request_id!r} waiting for a "
            "decision; ListPendingToolCalls lists the open calls (awaiting_permission marks "
            "those whose request is open; the request_id is the tool_call_id)"
        )


class PermissionAnsweredError(ServiceError):
    status: StatusName = "ALREADY_EXISTS"
    reason = Reason.ERROR_REASON_PERMISSION_ANSWERED

    def __init__(self, session_id: str, request_id: str) -> None:
        super().__init__(
            f"permission request {request_id!r} of session {session_id!r} already has a "
            "different decision (the first decision recorded wins); read it in its "
            "permission.completed event"
        )


class AwaitingPermissionError(ServiceError):
    status: StatusName = "FAILED_PRECONDITION"
    reason = Reason.ERROR_REASON_AWAITING_PERMISSION

    def __init__(self, session_id: str, tool_call_id: str) -> None:
        super().__init__(
            f"tool call {tool_call_id!r} of session {session_id!r} waits for a permission "
            "decision, so it takes no result yet; approve it with HandlePendingPermission "
            "first (a denied call gets its result from the daemon)"
        )


class TurnHolderUnreachableError(ServiceError):
    """The daemon running a session's turn did not act on a relayed call in time."""

    status: StatusName = "UNAVAILABLE"
    reason = Reason.ERROR_REASON_TURN_HOLDER_UNREACHABLE

    def __init__(
        self, session_id: str, turn_id: str, seconds: float, *, taken_up: bool = False
    ) -> None:
        what = (
            "it took this call up but never answered; whether it took effect is unknown: "
            "read the session's events before trying again"
            if taken_up
            else "the call was withdrawn and changed nothing. Try again: once that "
            "daemon's lease expires, another daemon takes the turn over"
        )
        super().__init__(
            f"turn {turn_id!r} of session {session_id!r} runs on another daemon, which did "
            f"not answer within {seconds:g} s (it may be stuck, or dead with its lease not "
            f"yet expired); {what}"
        )


class RelayedError(ServiceError):
    """An error the daemon running the turn raised for a call relayed to it, as it raised it."""

    def __init__(self, status: StatusName, reason: Reason.ValueType, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class CompactionFailedError(ServiceError):
    """The model could not summarise the session (the context stays as it was)."""

    status: StatusName = "UNAVAILABLE"
    reason = Reason.ERROR_REASON_COMPACTION_FAILED

    def __init__(self, session_id: str, why: str) -> None:
        super().__init__(
            f"session {session_id!r} was not compacted: {why}; the model's context is as "
            "before. Try again later, or switch the session to another model (SetModel)"
        )


class NothingToCompactError(ServiceError):
    status: StatusName = "FAILED_PRECONDITION"
    reason = Reason.ERROR_REASON_NOTHING_TO_COMPACT

    def __init__(self, session_id: str, kept_turns: int) -> None:
        super().__init__(
            f"session {session_id!r} has nothing to compact: its model already sees only the "
            f"summary and the latest {kept_turns} turns, which always go to it verbatim; "
            "compact again after more turns"
        )


# -- fork and rewind -----------------------------------------------------------


class PointInsideTurnError(InvalidArgumentError):
    """A fork point or rewind target between a turn's user message and its end."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Reason.ERROR_REASON_POINT_INSIDE_TURN)


class PointInsideToolCallError(InvalidArgumentError):
    """A fork point or rewind target between a tool call and its result (or a
    permission request and its decision)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Reason.ERROR_REASON_POINT_INSIDE_TOOL_CALL)


class SequenceOutOfRangeError(InvalidArgumentError):
    def __init__(self, message: str) -> None:
        super().__init__(message, Reason.ERROR_REASON_SEQUENCE_OUT_OF_RANGE)


class SequenceRewoundError(InvalidArgumentError):
    def __init__(self, session_id: str, sequence: int) -> None:
        super().__init__(
            f"sequence {sequence} of session {session_id!r} was cut by a rewind; pick an event "
            "of the history as it goes on now (ListEvents without include_rewound lists them)",
            Reason.ERROR_REASON_SEQUENCE_REWOUND,
        )


class TurnRunningError(FailedPreconditionError):
    def __init__(self, session_id: str, what: str) -> None:
        super().__init__(
            f"session {session_id!r} is running a turn, so it cannot be {what} now; wait for "
            "the turn to end, abort it (AbortTurn), or ask for it to be aborted first "
            "(abort_turn=True; --abort-turn on the command line)",
            Reason.ERROR_REASON_TURN_RUNNING,
        )
