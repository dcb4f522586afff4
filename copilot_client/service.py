"""``copilot_client.service``: the low-level client of copilotd's gRPC service.

A public module, for programs (the ``copilotd`` command among them) that want
the raw RPCs without :class:`copilot_client.CopilotClient`'s sessions:
:class:`ServiceClient` owns the channel and the generated stubs (``stub`` for
``CopilotService``, ``admin_stub`` for ``CopilotAdminService``), and every
call goes through :meth:`ServiceClient.call` (unary) or
:meth:`ServiceClient.mapped_errors` (streams), where :func:`map_rpc_error`
turns a failed call into the most specific :class:`copilot_client.RPCError`::

    service = ServiceClient(resolve_socket_path())
    service.open()
    try:
        pong = await service.call(service.stub.Ping, copilot_pb2.PingRequest())
    finally:
        await service.close()
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, TypeVar

import grpc

from ._deadlines import CALL_TIMEOUT, UseCallTimeout, per_call
from ._errors import (
    BackupUnsupportedError,
    CompactionFailedError,
    CompactionInProgressError,
    CopilotError,
    DaemonTimeoutError,
    DaemonUnavailableError,
    FailedPreconditionError,
    InvalidArgumentError,
    InvalidImportError,
    MessageAlreadyAnsweredError,
    NoRetentionPolicyError,
    NothingToCompactError,
    PermissionAnsweredError,
    PointInsideToolCallError,
    PointInsideTurnError,
    ProviderSecretRequiredError,
    ResourceExhaustedError,
    RPCError,
    SequenceConflictError,
    SequenceOutOfRangeError,
    SequenceRewoundError,
    SessionExistsError,
    SessionNotFoundError,
    SubscriberTooSlowError,
    ToolCallAnsweredError,
    TurnHolderUnreachableError,
    TurnRunningError,
    UnauthenticatedError,
    UnknownPermissionRequestError,
    UnknownToolCallError,
)
from .paths import channel_target, verify_private_socket
from .proto.admin.v1 import admin_pb2_grpc
from .proto.v1 import copilot_pb2, copilot_pb2_grpc
from .wire import CURRENT_SEQUENCE_METADATA_KEY, DEFAULT_CALL_TIMEOUT, REASON_METADATA_KEY

__all__ = [
    "CALL_TIMEOUT",
    "DEFAULT_CALL_TIMEOUT",
    "ERROR_FOR_REASON",
    "START_HINT",
    "ServiceClient",
    "UseCallTimeout",
    "map_rpc_error",
    "per_call",
]


RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")

# A local socket: reconnect quickly (the daemon may be starting or restarting)
# and allow large pages of events. grpc.min_reconnect_backoff_ms is left at
# its default on purpose: grpc also uses it as the connect timeout, and at
# 100 ms a daemon that systemd is still starting (socket activation) was
# reported as not running; each call's deadline bounds the wait instead.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.enable_http_proxy", 0),
    # Each channel connects on its own: with grpc's process-wide subchannel
    # pool, a new client inherited another's backoff after an outage and
    # failed at once although the daemon was serving again.
    ("grpc.use_local_subchannel_pool", 1),
)


class ServiceClient:
    """Owns the channel and stubs; maps every failed call to a ``CopilotError``.

    Args:
        socket_path: The daemon's Unix socket.
        address: ``HOST:PORT`` of the daemon's TCP port, used instead of the
            socket when given.
        token: The bearer token sent with every call over TCP.
        tls_root_cert: PEM file of the certificate to trust: TCP then uses TLS.
            Without it, TCP is plain text, which grpc allows to loopback
            addresses only, so the token never crosses a network in clear.
        call_timeout: Seconds a unary call may take when :meth:`call` is not
            given its own deadline; ``None`` for no limit.
    """

    def __init__(
        self,
        socket_path: Path,
        *,
        address: str | None = None,
        token: str | None = None,
        tls_root_cert: Path | None = None,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        self.socket_path = socket_path
        self.call_timeout = call_timeout
        self.address = address
        self._token = token
        self._tls_root_cert = tls_root_cert
        self._channel: grpc.aio.Channel | None = None
        self._stub: copilot_pb2_grpc.CopilotServiceAsyncStub | None = None
        self._admin_stub: admin_pb2_grpc.CopilotAdminServiceAsyncStub | None = None

    @property
    def where(self) -> str:
        """The address or socket calls go to, for messages."""
        return self.address or str(self.socket_path)

    @property
    def is_open(self) -> bool:
        """Whether the channel exists."""
        return self._channel is not None

    @property
    def channel(self) -> grpc.aio.Channel:
        """The open channel."""
        if self._channel is None:
            raise CopilotError("the client is not started")
        return self._channel

    @property
    def stub(self) -> copilot_pb2_grpc.CopilotServiceAsyncStub:
        """The session service's stub (``CopilotService``) on the open channel."""
        if self._stub is None:
            raise CopilotError("the client is not started")
        return self._stub

    @property
    def admin_stub(self) -> admin_pb2_grpc.CopilotAdminServiceAsyncStub:
        """The administration service's stub (``CopilotAdminService``) on the open channel."""
        if self._admin_stub is None:
            raise CopilotError("the client is not started")
        return self._admin_stub

    def open(self) -> None:
        """Creates the channel (connecting happens on the first call).

        Raises:
            UntrustedSocketError: The socket or its folder is not this user's
                alone, or another user's process serves it (nothing is sent).
        """
        if self._channel is None:
            if self.address is None:
                verify_private_socket(self.socket_path)
                self._channel = grpc.aio.insecure_channel(
                    channel_target(self.socket_path), options=CHANNEL_OPTIONS
                )
            else:
                self._channel = grpc.aio.secure_channel(
                    self.address, self._tcp_credentials(), options=CHANNEL_OPTIONS
                )
            self._stub = copilot_pb2_grpc.CopilotServiceStub(self._channel)
            self._admin_stub = admin_pb2_grpc.CopilotAdminServiceStub(self._channel)

    def _tcp_credentials(self) -> grpc.ChannelCredentials:
        if self._tls_root_cert is not None:
            credentials = grpc.ssl_channel_credentials(self._tls_root_cert.read_bytes())
        else:
            credentials = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        if self._token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self._token)
            )
        return credentials

    async def close(self) -> None:
        """Closes the channel, cancelling calls still running on it."""
        channel, self._channel = self._channel, None
        self._stub = self._admin_stub = None
        if channel is not None:
            await channel.close()

    async def call(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
        *,
        deadline: float | UseCallTimeout | None = CALL_TIMEOUT,
        wait_for_ready: bool = False,
    ) -> ResponseT:
        """Runs one unary call; the one place where unary failures are mapped.

        A daemon whose connection is being set up (systemd starting it) is
        waited for within the deadline; a socket nothing serves fails at once
        unless ``wait_for_ready``.

        Args:
            rpc: A method of :attr:`stub` or :attr:`admin_stub`, e.g.
                ``service.stub.Ping``.
            request: Its request message.
            deadline: Seconds the call may take; ``None`` for no limit;
                by default :attr:`call_timeout`.
            wait_for_ready: Wait (within the deadline) for a daemon that is
                not serving yet instead of failing: for one known to be starting.

        Raises:
            DaemonTimeoutError: The deadline passed without an answer.
            RPCError: The most specific subclass for any other failure.
        """
        seconds = self.call_timeout if isinstance(deadline, UseCallTimeout) else deadline
        with self.mapped_errors(deadline=seconds):
            return await rpc(request, timeout=seconds, wait_for_ready=wait_for_ready)

    async def ping(
        self,
        *,
        deadline: float | UseCallTimeout | None = CALL_TIMEOUT,
        wait_for_ready: bool = False,
    ) -> str:
        """The daemon's version; raises the mapped error when it does not answer."""
        response = await self.call(
            self.stub.Ping,
            copilot_pb2.PingRequest(),
            deadline=deadline,
            wait_for_ready=wait_for_ready,
        )
        return response.version

    @contextmanager
    def mapped_errors(self, *, deadline: float | None = None) -> Iterator[None]:
        """Maps a failed call inside the block, for streaming calls, as :meth:`call` does.

        Args:
            deadline: The seconds the call was given, named when it timed out.

        Raises:
            RPCError: The most specific subclass for the failure.
        """
        try:
            yield
        except grpc.aio.AioRpcError as error:
            raise map_rpc_error(error, socket_path=self.where, deadline=deadline) from error

    async def stream_events(
        self,
        session_id: str,
        after_sequence: int,
        tool_client: copilot_pb2.ToolClient | None = None,
    ) -> AsyncGenerator[copilot_pb2.StreamEventsResponse, None]:
        """Yields ``StreamEvents`` responses; failures are mapped like :meth:`call`.

        Closing the generator (or cancelling its consumer) cancels the call.
        With ``tool_client``, the stream attaches that client and its tools to
        the session until it ends.
        """
        request = copilot_pb2.StreamEventsRequest(
            session_id=session_id, after_sequence=after_sequence, tool_client=tool_client
        )
        call = self.stub.StreamEvents(request)
        try:
            with self.mapped_errors():
                async for response in call:
                    yield response
        finally:
            call.cancel()

    async def watch_lifecycle(self) -> AsyncGenerator[copilot_pb2.LifecycleEvent | None, None]:
        """Yields None once the watch is live, then lifecycle events; failures mapped."""
        call = self.stub.WatchLifecycle(copilot_pb2.WatchLifecycleRequest())
        try:
            with self.mapped_errors():
                await call.initial_metadata()  # the daemon sends it once the watch is live
                yield None
                async for event in call:
                    yield event
        finally:
            call.cancel()


START_HINT: Final = "Start it with `copilotd serve` or `systemctl --user start copilotd`."

Reason = copilot_pb2.ErrorReason

# Every ErrorReason the daemon sends, to its class (tests/test_client_types.py
# fails when the proto gains a reason missing here). UNSPECIFIED is absent: the
# status code decides then, as it does for errors raised by grpc itself.
ERROR_FOR_REASON: Final[dict[copilot_pb2.ErrorReason.ValueType, type[RPCError]]] = {
    Reason.ERROR_REASON_SESSION_NOT_FOUND: SessionNotFoundError,
    Reason.ERROR_REASON_SESSION_EXISTS: SessionExistsError,
    Reason.ERROR_REASON_INVALID_SESSION_ID: InvalidArgumentError,
    Reason.ERROR_REASON_EMPTY_PROMPT: InvalidArgumentError,
    Reason.ERROR_REASON_PROMPT_TOO_LARGE: InvalidArgumentError,
    Reason.ERROR_REASON_INVALID_PAGE_TOKEN: InvalidArgumentError,
    Reason.ERROR_REASON_INVALID_ARGUMENT: InvalidArgumentError,
    Reason.ERROR_REASON_INVALID_SEARCH_QUERY: InvalidArgumentError,
    Reason.ERROR_REASON_SEQUENCE_CONFLICT: SequenceConflictError,
    Reason.ERROR_REASON_STORE_FULL: ResourceExhaustedError,
    Reason.ERROR_REASON_SUBSCRIBER_TOO_SLOW: SubscriberTooSlowError,
    Reason.ERROR_REASON_SHUTTING_DOWN: DaemonUnavailableError,
    Reason.ERROR_REASON_INTERNAL: RPCError,
    Reason.ERROR_REASON_MESSAGE_ALREADY_ANSWERED: MessageAlreadyAnsweredError,
    Reason.ERROR_REASON_INVALID_IMPORT: InvalidImportError,
    Reason.ERROR_REASON_BACKUP_UNSUPPORTED: BackupUnsupportedError,
    Reason.ERROR_REASON_NO_RETENTION_POLICY: NoRetentionPolicyError,
    Reason.ERROR_REASON_INVALID_PROVIDER: InvalidArgumentError,
    Reason.ERROR_REASON_UNKNOWN_MODEL: InvalidArgumentError,
    Reason.ERROR_REASON_PROVIDER_SECRET_REQUIRED: ProviderSecretRequiredError,
    Reason.ERROR_REASON_MODEL_UNAVAILABLE: FailedPreconditionError,
    Reason.ERROR_REASON_UNKNOWN_TOOL_CALL: UnknownToolCallError,
    Reason.ERROR_REASON_TOOL_CALL_ANSWERED: ToolCallAnsweredError,
    Reason.ERROR_REASON_INVALID_TOOL: InvalidArgumentError,
    Reason.ERROR_REASON_UNKNOWN_PERMISSION_REQUEST: UnknownPermissionRequestError,
    Reason.ERROR_REASON_PERMISSION_ANSWERED: PermissionAnsweredError,
    Reason.ERROR_REASON_AWAITING_PERMISSION: FailedPreconditionError,
    Reason.ERROR_REASON_TURN_HOLDER_UNREACHABLE: TurnHolderUnreachableError,
    Reason.ERROR_REASON_COMPACTION_FAILED: CompactionFailedError,
    Reason.ERROR_REASON_NOTHING_TO_COMPACT: NothingToCompactError,
    Reason.ERROR_REASON_COMPACTION_IN_PROGRESS: CompactionInProgressError,
    Reason.ERROR_REASON_INVALID_INFINITE_SESSIONS: InvalidArgumentError,
    Reason.ERROR_REASON_POINT_INSIDE_TURN: PointInsideTurnError,
    Reason.ERROR_REASON_POINT_INSIDE_TOOL_CALL: PointInsideToolCallError,
    Reason.ERROR_REASON_SEQUENCE_OUT_OF_RANGE: SequenceOutOfRangeError,
    Reason.ERROR_REASON_SEQUENCE_REWOUND: SequenceRewoundError,
    Reason.ERROR_REASON_TURN_RUNNING: TurnRunningError,
}

_BY_STATUS: Final[dict[grpc.StatusCode, type[RPCError]]] = {
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


# grpc's words for a call that ended without a gRPC status: "Stream removed
# (RST_STREAM (Received RST_STREAM with error code 2))" (INTERNAL) or "Stream
# removed (Data frame with END_STREAM flag received)" (UNKNOWN). copilotd
# always ends a call with a status; a proxy in between does this when the
# daemon behind it died mid-call (nginx does both).
_CUT_BY_PROXY = "Stream removed"
# grpc's words for an HTTP error answer instead of a gRPC one: a proxy's
# "Bad Gateway" and the like, when no daemon behind it could take the call.
_PROXY_FOUND_NO_DAEMON = re.compile(r"Received http2 header with status: 50[234]\b")
_CUT_STATUSES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


def _class_for(reason: str, status: grpc.StatusCode, details: str) -> type[RPCError]:
    try:
        return ERROR_FOR_REASON[Reason.Value(reason)]
    except (ValueError, KeyError):  # no reason, or one this client does not know yet
        if status in _CUT_STATUSES and details.startswith(_CUT_BY_PROXY):
            # The daemon is gone from behind the proxy: retried like any outage.
            return DaemonUnavailableError
        return _BY_STATUS.get(status, RPCError)


def map_rpc_error(
    error: grpc.aio.AioRpcError,
    *,
    socket_path: str | os.PathLike[str],
    deadline: float | None = None,
) -> RPCError:
    """The most specific :class:`copilot_client.RPCError` for a failed call.

    The daemon's reason (trailing metadata ``copilot-error-reason``, see
    :mod:`copilot_client.wire`) decides first, then the status code. The
    daemon's message is kept as the text.

    Args:
        error: The failed call.
        socket_path: The socket the call went to, named in connection errors.
        deadline: The seconds the call was given, named when it timed out.

    Returns:
        The exception to raise (the caller chains ``error`` to it).
    """
    status = error.code()
    reason = _trailer(error, REASON_METADATA_KEY)
    details = error.details() or status.name
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {deadline:g} s" if deadline is not None else " in time"
        return DaemonTimeoutError(
            f"copilotd at {os.fspath(socket_path)} did not answer{within}: it is frozen "
            "(a stopped process), stuck or overloaded. Check it with `copilotd status`, "
            "or allow more time (the client's or the call's timeout)",
            status=status,
            socket_path=socket_path,
        )
    cls = _class_for(reason, status, details)
    if cls is DaemonUnavailableError:
        if reason == Reason.Name(Reason.ERROR_REASON_SHUTTING_DOWN):
            message = f"copilotd at {os.fspath(socket_path)} is shutting down: {details}"
        elif _PROXY_FOUND_NO_DAEMON.search(details):
            message = (
                f"the proxy at {os.fspath(socket_path)} found no copilotd behind it to take "
                f"the call ({details}): check that the daemons behind it run and that it "
                "reaches them (its error log says why)"
            )
        elif status != grpc.StatusCode.UNAVAILABLE:
            message = (
                f"the call to copilotd through {os.fspath(socket_path)} was cut ({details}): "
                "the proxy there lost the daemon serving it. Another daemon behind the "
                "proxy can serve the call again; whether a write took effect is unknown, "
                "so read before retrying it"
            )
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
