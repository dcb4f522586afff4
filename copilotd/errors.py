"""Domain errors of the daemon and the one place they become gRPC statuses.

Every error the core raises on purpose is a ``ServiceError`` carrying a status
code, an ``ErrorReason`` (sent as trailing metadata "copilot-error-reason")
and a message a person can act on. ``grpc_status_for`` is the translator the
servicer applies; anything else becomes INTERNAL with details in the log only.
"""

from __future__ import annotations

import grpc

from copilot_client.proto.v1 import copilot_pb2

Reason = copilot_pb2.ErrorReason
REASON_METADATA_KEY = "copilot-error-reason"
CURRENT_SEQUENCE_METADATA_KEY = "copilot-current-sequence"


class ServiceError(Exception):
    status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: Reason.ValueType = Reason.ERROR_REASON_INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # Extra trailing metadata that helps the caller recover.
        self.trailers: tuple[tuple[str, str], ...] = ()


class SessionNotFoundError(ServiceError):
    status = grpc.StatusCode.NOT_FOUND
    reason = Reason.ERROR_REASON_SESSION_NOT_FOUND

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"no session with id {session_id!r}; list the existing ones with ListSessions "
            "or create it with CreateSession"
        )


class SessionExistsError(ServiceError):
    status = grpc.StatusCode.ALREADY_EXISTS
    reason = Reason.ERROR_REASON_SESSION_EXISTS

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"a session with id {session_id!r} already exists; resume it, delete it first, "
            "or choose another id"
        )


class InvalidArgumentError(ServiceError):
    status = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.ERROR_REASON_INVALID_ARGUMENT

    def __init__(
        self, message: str, reason: Reason.ValueType = Reason.ERROR_REASON_INVALID_ARGUMENT
    ) -> None:
        super().__init__(message)
        self.reason = reason


class FailedPreconditionError(ServiceError):
    """The session is not in a state that allows the call; ``reason`` says why."""

    status = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, reason: Reason.ValueType) -> None:
        super().__init__(message)
        self.reason = reason


class SequenceConflictError(ServiceError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.ERROR_REASON_SEQUENCE_CONFLICT

    def __init__(self, session_id: str, expected: int, current: int) -> None:
        super().__init__(
            f"session {session_id!r} has moved on to sequence {current} (you expected "
            f"{expected}); nothing was written: read the new events and send again"
        )
        self.trailers = ((CURRENT_SEQUENCE_METADATA_KEY, str(current)),)


class MessageAlreadyAnsweredError(ServiceError):
    status = grpc.StatusCode.ALREADY_EXISTS
    reason = Reason.ERROR_REASON_MESSAGE_ALREADY_ANSWERED

    def __init__(self, session_id: str, message_id: str) -> None:
        super().__init__(
            f"message {message_id!r} of session {session_id!r} was already sent and its turn "
            "has ended; read its answer with ListEvents, or send a new message with a new id"
        )


class StoreFullError(ServiceError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.ERROR_REASON_STORE_FULL


class SubscriberTooSlowError(ServiceError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.ERROR_REASON_SUBSCRIBER_TOO_SLOW


class ShuttingDownError(ServiceError):
    status = grpc.StatusCode.UNAVAILABLE
    reason = Reason.ERROR_REASON_SHUTTING_DOWN

    def __init__(self) -> None:
        super().__init__("copilotd is shutting down; retry once it is back")


# -- administration ----------------------------------------------------------


class InvalidImportError(InvalidArgumentError):
    """An imported history is not complete and in order; the message says where."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Reason.ERROR_REASON_INVALID_IMPORT)


class BackupUnsupportedError(ServiceError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.ERROR_REASON_BACKUP_UNSUPPORTED


class NoRetentionPolicyError(ServiceError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.ERROR_REASON_NO_RETENTION_POLICY

    def __init__(self) -> None:
        super().__init__(
            "no retention rule was given and the daemon has no [retention] policy configured; "
            "give older_than and/or keep, or configure [retention] in the config file"
        )


def grpc_status_for(
    error: ServiceError,
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """Status code, message and trailing metadata that represent ``error`` on the wire."""
    reason_name = Reason.Name(error.reason)
    return error.status, error.message, ((REASON_METADATA_KEY, reason_name), *error.trailers)
