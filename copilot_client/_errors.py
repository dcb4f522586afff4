"""Exceptions raised by the client, and the one place gRPC errors become them.

The tree::

    CopilotError
    ├── RPCError                          (status, reason)
    │   ├── SessionNotFoundError          NOT_FOUND
    │   ├── SessionExistsError            ALREADY_EXISTS
    │   │   └── MessageAlreadyAnsweredError  reason MESSAGE_ALREADY_ANSWERED
    │   ├── UnknownToolCallError          reason UNKNOWN_TOOL_CALL (NOT_FOUND)
    │   │   └── UnknownPermissionRequestError  reason UNKNOWN_PERMISSION_REQUEST
    │   ├── ToolCallAnsweredError         reason TOOL_CALL_ANSWERED (ALREADY_EXISTS)
    │   │   └── PermissionAnsweredError   reason PERMISSION_ANSWERED
    │   ├── InvalidArgumentError          INVALID_ARGUMENT
    │   │   ├── InvalidImportError        reason INVALID_IMPORT
    │   │   └── InvalidPointError         a fork point or rewind target
    │   │       ├── PointInsideTurnError  reason POINT_INSIDE_TURN
    │   │       │   └── PointInsideToolCallError  reason POINT_INSIDE_TOOL_CALL
    │   │       ├── SequenceOutOfRangeError  reason SEQUENCE_OUT_OF_RANGE
    │   │       └── SequenceRewoundError  reason SEQUENCE_REWOUND
    │   ├── FailedPreconditionError       FAILED_PRECONDITION
    │   │   ├── SequenceConflictError     reason SEQUENCE_CONFLICT
    │   │   ├── ProviderSecretRequiredError  reason PROVIDER_SECRET_REQUIRED
    │   │   ├── BackupUnsupportedError    reason BACKUP_UNSUPPORTED
    │   │   ├── NoRetentionPolicyError    reason NO_RETENTION_POLICY
    │   │   ├── NothingToCompactError     reason NOTHING_TO_COMPACT
    │   │   ├── CompactionInProgressError  reason COMPACTION_IN_PROGRESS
    │   │   └── TurnRunningError          reason TURN_RUNNING
    │   ├── CompactionFailedError         reason COMPACTION_FAILED (UNAVAILABLE)
    │   ├── ResourceExhaustedError        RESOURCE_EXHAUSTED
    │   │   └── SubscriberTooSlowError    reason SUBSCRIBER_TOO_SLOW
    │   ├── UnauthenticatedError          UNAUTHENTICATED (TCP without the right token)
    │   └── DaemonUnavailableError        UNAVAILABLE, no daemon reached, or a proxy cut the call
    │       ├── DaemonTimeoutError        DEADLINE_EXCEEDED (also a TimeoutError)
    │       └── TurnHolderUnreachableError  reason TURN_HOLDER_UNREACHABLE
    ├── UntrustedSocketError              the socket or its folder is not this user's alone
    └── SessionFailedError                a turn reported ``session.error``

Only :func:`copilot_client.service.map_rpc_error` looks at status codes and
reasons; everything else in the package catches these classes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # grpc is imported where a call fails, not here: an auto-start raises
    # these before the client has imported grpc (it launches the daemon first).
    import grpc

    from ._session_events import SessionEvent

__all__ = [
    "BackupUnsupportedError",
    "CompactionFailedError",
    "CompactionInProgressError",
    "CopilotError",
    "DaemonTimeoutError",
    "DaemonUnavailableError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "InvalidImportError",
    "InvalidPointError",
    "MessageAlreadyAnsweredError",
    "NoRetentionPolicyError",
    "NothingToCompactError",
    "PermissionAnsweredError",
    "PointInsideToolCallError",
    "PointInsideTurnError",
    "ProviderSecretRequiredError",
    "RPCError",
    "ResourceExhaustedError",
    "SequenceConflictError",
    "SequenceOutOfRangeError",
    "SequenceRewoundError",
    "SessionExistsError",
    "SessionFailedError",
    "SessionNotFoundError",
    "SubscriberTooSlowError",
    "ToolCallAnsweredError",
    "TurnRunningError",
    "UnauthenticatedError",
    "UnknownPermissionRequestError",
    "UnknownToolCallError",
    "UntrustedSocketError",
]


class CopilotError(Exception):
    """Base class of every error raised by ``copilot_client``."""


class RPCError(CopilotError):
    """A call to the daemon failed.

    Attributes:
        message: The daemon's human-readable explanation.
        status: The gRPC status code.
        reason: The ``ErrorReason`` name sent by the daemon (for example
            ``"ERROR_REASON_SESSION_NOT_FOUND"``), or ``""`` when none was sent.
    """

    def __init__(self, message: str, *, status: grpc.StatusCode, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status.name}, "
            f"reason={self.reason!r})"
        )


class SessionNotFoundError(RPCError):
    """No session has this id (never created, or deleted)."""


class SessionExistsError(RPCError):
    """A session with this id already exists."""


class MessageAlreadyAnsweredError(SessionExistsError):
    """A message id was sent again after its turn ended: read its answer from the
    session's events, or send a new message with a new id. (A subclass of
    :class:`SessionExistsError` because earlier releases raised that.)"""


class UnknownToolCallError(RPCError):
    """No call with this id waits for a result in the session (never made, or
    closed by an abort, a timeout or a resume without pending work)."""


class ToolCallAnsweredError(RPCError):
    """The call already has a different result: the first one recorded wins."""


class UnknownPermissionRequestError(UnknownToolCallError):
    """No permission request with this id waits for a decision in the session."""


class PermissionAnsweredError(ToolCallAnsweredError):
    """The permission request already has a different decision: the first one wins."""


class InvalidArgumentError(RPCError):
    """The daemon rejected an argument (session id, prompt, page token, ...)."""


class InvalidImportError(InvalidArgumentError):
    """An imported history is not complete and in order; the message says where."""


class InvalidPointError(InvalidArgumentError):
    """A fork point or rewind target the conversation cannot go on from."""


class PointInsideTurnError(InvalidPointError):
    """The point is inside a turn (after its user message, before its end)."""


class PointInsideToolCallError(PointInsideTurnError):
    """The point is between a tool call and its result (or a permission request
    and its decision)."""


class SequenceOutOfRangeError(InvalidPointError):
    """No event of the session has that sequence (or a rewind to it cuts nothing)."""


class SequenceRewoundError(InvalidPointError):
    """The event at that sequence was cut by a rewind."""


class FailedPreconditionError(RPCError):
    """The session is not in a state that allows the call."""


class TurnRunningError(FailedPreconditionError):
    """The session runs a turn; rewind with ``abort_turn=True`` to abort it first."""


class SequenceConflictError(FailedPreconditionError):
    """The session's log moved on since the sequence number the call expected.

    Nothing was written. ``current_sequence`` is the session's last sequence
    number when the daemon refused the call (None if it did not say).
    """

    current_sequence: int | None = None


class ProviderSecretRequiredError(FailedPreconditionError):
    """The session has its own provider, whose secret the daemon no longer holds
    (it keeps secrets in memory only): resume the session with
    ``client.resume_session(id, provider=...)`` and send again."""


class BackupUnsupportedError(FailedPreconditionError):
    """The daemon's store cannot make a consistent backup copy."""


class NoRetentionPolicyError(FailedPreconditionError):
    """A prune gave no rule and the daemon has no ``[retention]`` policy configured."""


class NothingToCompactError(FailedPreconditionError):
    """``session.compact()`` found nothing to summarise: the model already sees
    only the summary and the latest turns, which always go to it verbatim."""


class CompactionInProgressError(FailedPreconditionError):
    """Another daemon sharing the store is compacting the session (one compaction of a
    session runs at a time across daemons); its complete event follows."""


class CompactionFailedError(RPCError):
    """The model could not summarise the session; its context is as it was before."""


class ResourceExhaustedError(RPCError):
    """The daemon ran out of room, this client fell behind an event stream, or a
    request (or answer) exceeds the gRPC message size limit (``reason`` is then
    ``""`` and the message gives the sizes)."""


class SubscriberTooSlowError(ResourceExhaustedError):
    """This client fell behind a session's live events and the daemon cut its
    stream off; re-attaching from the last event read loses nothing."""


class UnauthenticatedError(RPCError):
    """The daemon's TCP port refused the call: no bearer token, or not the right one."""


class DaemonUnavailableError(RPCError):
    """The daemon cannot be reached, is shutting down, or could not be started;
    or a proxy in between (a load balancer) cut the call when its daemon died.

    Attributes:
        socket_path: The Unix socket the client tried.
    """

    def __init__(
        self,
        message: str,
        *,
        status: grpc.StatusCode | None = None,
        reason: str = "",
        socket_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """``status`` defaults to ``UNAVAILABLE``."""
        if status is None:
            import grpc

            status = grpc.StatusCode.UNAVAILABLE
        super().__init__(message, status=status, reason=reason)
        self.socket_path = os.fspath(socket_path) if socket_path is not None else None


class DaemonTimeoutError(DaemonUnavailableError, TimeoutError):
    """The daemon did not answer within the call's deadline (the client's
    ``timeout``, or the call's own): it is frozen (a stopped process), stuck,
    or overloaded. Also a built-in ``TimeoutError``. Whether a call that
    timed out took effect is unknown: read before retrying a write."""


class TurnHolderUnreachableError(DaemonUnavailableError):
    """Several daemons share one store, and the one running the session's turn did
    not act on this call in time (it is stuck, or died and its lease has not
    expired yet). The call was withdrawn and changed nothing: try it again."""


class UntrustedSocketError(CopilotError):
    """The client refused to connect: the socket, or the folder it is in, belongs
    to another user or is open to others, or the process serving it runs as
    another user. Whoever serves it would receive this user's prompts and
    keys, so the client neither connects nor starts a daemon there.

    Attributes:
        socket_path: The socket the client refused.
    """

    def __init__(self, message: str, *, socket_path: str | os.PathLike[str]) -> None:
        super().__init__(message)
        self.socket_path = os.fspath(socket_path)


class SessionFailedError(CopilotError):
    """A turn ended with a ``session.error`` event.

    Attributes:
        event: The ``session.error`` event; ``event.data.message`` and
            ``event.data.error_type`` say what went wrong.
    """

    def __init__(self, event: SessionEvent) -> None:
        data = event.data
        kind = f" ({data.error_type})" if data.error_type else ""
        super().__init__(f"the turn failed{kind}: {data.message or 'no detail given'}")
        self.event = event
