"""Exceptions raised by the client, and the one place gRPC errors become them.

The tree::

    CopilotError
    ├── RPCError                          (status, reason)
    │   ├── SessionNotFoundError          NOT_FOUND
    │   ├── SessionExistsError            ALREADY_EXISTS
    │   ├── InvalidArgumentError          INVALID_ARGUMENT
    │   ├── FailedPreconditionError       FAILED_PRECONDITION
    │   │   ├── SequenceConflictError     reason SEQUENCE_CONFLICT
    │   │   └── ProviderSecretRequiredError  reason PROVIDER_SECRET_REQUIRED
    │   ├── ResourceExhaustedError        RESOURCE_EXHAUSTED
    │   ├── UnauthenticatedError          UNAUTHENTICATED (TCP without the right token)
    │   └── DaemonUnavailableError        UNAVAILABLE, or the daemon cannot be reached
    └── SessionFailedError                a turn reported ``session.error``

Only :func:`map_rpc_error` looks at status codes; everything else in the
package catches these classes.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from ._types import SessionEvent

__all__ = [
    "REASON_METADATA_KEY",
    "CopilotError",
    "DaemonUnavailableError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "ProviderSecretRequiredError",
    "RPCError",
    "ResourceExhaustedError",
    "SequenceConflictError",
    "SessionExistsError",
    "SessionFailedError",
    "SessionNotFoundError",
    "UnauthenticatedError",
    "map_rpc_error",
]

REASON_METADATA_KEY = "copilot-error-reason"
CURRENT_SEQUENCE_METADATA_KEY = "copilot-current-sequence"

START_HINT = "Start it with `copilotd serve` or `systemctl --user start copilotd`."


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


class InvalidArgumentError(RPCError):
    """The daemon rejected an argument (session id, prompt, page token, ...)."""


class FailedPreconditionError(RPCError):
    """The session is not in a state that allows the call."""


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


class ResourceExhaustedError(RPCError):
    """The daemon ran out of room, this client fell behind an event stream, or a
    request (or answer) exceeds the gRPC message size limit (``reason`` is then
    ``""`` and the message gives the sizes)."""


class UnauthenticatedError(RPCError):
    """The daemon's TCP port refused the call: no bearer token, or not the right one."""


class DaemonUnavailableError(RPCError):
    """The daemon cannot be reached, is shutting down, or could not be started.

    Attributes:
        socket_path: The Unix socket the client tried.
    """

    def __init__(
        self,
        message: str,
        *,
        status: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        reason: str = "",
        socket_path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        self.socket_path = os.fspath(socket_path) if socket_path is not None else None


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


_BY_REASON: dict[str, type[RPCError]] = {
    "SESSION_NOT_FOUND": SessionNotFoundError,
    "SESSION_EXISTS": SessionExistsError,
    "INVALID_SESSION_ID": InvalidArgumentError,
    "EMPTY_PROMPT": InvalidArgumentError,
    "PROMPT_TOO_LARGE": InvalidArgumentError,
    "INVALID_PAGE_TOKEN": InvalidArgumentError,
    "INVALID_ARGUMENT": InvalidArgumentError,
    "SEQUENCE_CONFLICT": SequenceConflictError,
    "STORE_FULL": ResourceExhaustedError,
    "SUBSCRIBER_TOO_SLOW": ResourceExhaustedError,
    "SHUTTING_DOWN": DaemonUnavailableError,
    "INTERNAL": RPCError,
    "INVALID_PROVIDER": InvalidArgumentError,
    "UNKNOWN_MODEL": InvalidArgumentError,
    "PROVIDER_SECRET_REQUIRED": ProviderSecretRequiredError,
    "MODEL_UNAVAILABLE": FailedPreconditionError,
}

_BY_STATUS: dict[grpc.StatusCode, type[RPCError]] = {
    grpc.StatusCode.NOT_FOUND: SessionNotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: SessionExistsError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: DaemonUnavailableError,
}


# grpc's own words when a message exceeds a size limit, e.g. "SERVER: Received
# message larger than max (9437189 vs. 8388608)". Older grpc releases leave
# out the side.
_TOO_LARGE = re.compile(
    r"(?:(?P<side>SERVER|CLIENT): )?(?P<verb>Received|Sent) message larger than max "
    r"\((?P<size>\d+) vs\. (?P<limit>\d+)\)"
)
_SHORTEN = (
    "copilotd refuses prompts and system messages over its --max-prompt-bytes "
    "(1 MiB by default) anyway: shorten the prompt, or send a long text in parts"
)


def _message_too_large(details: str) -> str | None:
    """A message that says which size limit a call hit, or None if it hit none."""
    found = _TOO_LARGE.search(details)
    if found is None:
        return None
    size, limit = found["size"], found["limit"]
    # Who hit its limit: the client sending or receiving, or the daemon.
    by_client = found["side"] == "CLIENT" or (found["side"] is None and found["verb"] == "Sent")
    request = (found["verb"] == "Sent") == by_client
    whose = "this client's" if by_client else "the daemon's"
    if request:
        return (
            f"the request is {size} bytes, over {whose} message size limit of {limit} bytes, "
            f"so it was not processed; {_SHORTEN}"
        )
    return (
        f"the daemon's answer is {size} bytes, over {whose} message size limit of {limit} "
        "bytes: read the session's events in smaller pages"
    )


def _trailer(error: grpc.aio.AioRpcError, wanted: str) -> str:
    try:
        metadata = error.trailing_metadata() or ()
    except Exception:  # a client-side failure may carry no metadata at all
        return ""
    for key, value in metadata:
        if key == wanted:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def map_rpc_error(error: grpc.aio.AioRpcError, *, socket_path: str | os.PathLike[str]) -> RPCError:
    """The most specific :class:`RPCError` for a failed call.

    The daemon's reason (trailing metadata ``copilot-error-reason``) decides
    first, then the status code. The daemon's message is kept as the text.

    Args:
        error: The failed call.
        socket_path: The socket the call went to, named in connection errors.

    Returns:
        The exception to raise (the caller chains ``error`` to it).
    """
    status = error.code()
    reason = _trailer(error, REASON_METADATA_KEY)
    details = error.details() or status.name
    short = reason.removeprefix("ERROR_REASON_")
    cls = _BY_REASON.get(short) or _BY_STATUS.get(status, RPCError)
    if cls is DaemonUnavailableError:
        if short == "SHUTTING_DOWN":
            message = f"copilotd at {os.fspath(socket_path)} is shutting down: {details}"
        elif "Permission denied" in details:
            message = (
                f"copilotd at {os.fspath(socket_path)} is not open to this user ({details}): "
                "a daemon's socket is private to the user running it. Run as that user, or "
                "use your own daemon (the default socket is per user)."
            )
        else:
            message = (
                f"copilotd is not reachable at {os.fspath(socket_path)} ({details}). {START_HINT}"
            )
        return DaemonUnavailableError(
            message, status=status, reason=reason, socket_path=socket_path
        )
    if status == grpc.StatusCode.RESOURCE_EXHAUSTED and not reason:
        details = _message_too_large(details) or details
    mapped = cls(details, status=status, reason=reason)
    if isinstance(mapped, SequenceConflictError):
        current = _trailer(error, CURRENT_SEQUENCE_METADATA_KEY)
        mapped.current_sequence = int(current) if current.isdigit() else None
    return mapped
