"""The gRPC channel to the daemon and the one path every call takes."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TypeVar

import grpc

from ._errors import CopilotError, map_rpc_error
from ._paths import channel_target
from .proto.v1 import copilot_pb2, copilot_pb2_grpc

__all__ = ["Transport"]

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")

# A local socket: reconnect quickly (the daemon may be starting or restarting)
# and allow large pages of events.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.enable_http_proxy", 0),
)


class Transport:
    """Owns the channel and stub; maps every failed call to a ``CopilotError``.

    Args:
        socket_path: The daemon's Unix socket.
        address: ``HOST:PORT`` of the daemon's TCP port, used instead of the
            socket when given.
        token: The bearer token sent with every call over TCP.
        tls_root_cert: PEM file of the certificate to trust: TCP then uses TLS.
            Without it, TCP is plain text, which grpc allows to loopback
            addresses only, so the token never crosses a network in clear.
    """

    def __init__(
        self,
        socket_path: Path,
        *,
        address: str | None = None,
        token: str | None = None,
        tls_root_cert: Path | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.address = address
        self._token = token
        self._tls_root_cert = tls_root_cert
        self._channel: grpc.aio.Channel | None = None
        self._stub: copilot_pb2_grpc.CopilotServiceAsyncStub | None = None

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
        """The service stub on the open channel."""
        if self._stub is None:
            raise CopilotError("the client is not started")
        return self._stub

    def open(self) -> None:
        """Creates the channel (connecting happens on the first call)."""
        if self._channel is None:
            if self.address is None:
                self._channel = grpc.aio.insecure_channel(
                    channel_target(self.socket_path), options=CHANNEL_OPTIONS
                )
            else:
                self._channel = grpc.aio.secure_channel(
                    self.address, self._tcp_credentials(), options=CHANNEL_OPTIONS
                )
            self._stub = copilot_pb2_grpc.CopilotServiceStub(self._channel)

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
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def call(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
        *,
        deadline: float | None = None,
    ) -> ResponseT:
        """Runs one unary call; the one place where unary failures are mapped.

        Args:
            rpc: A method of :attr:`stub`, e.g. ``transport.stub.Ping``.
            request: Its request message.
            deadline: Seconds the call may take; ``None`` for no limit.

        Raises:
            RPCError: The most specific subclass for the failure.
        """
        try:
            return await rpc(request, timeout=deadline)
        except grpc.aio.AioRpcError as error:
            raise map_rpc_error(error, socket_path=self.where) from error

    async def stream_events(
        self, session_id: str, after_sequence: int
    ) -> AsyncGenerator[copilot_pb2.StreamEventsResponse, None]:
        """Yields ``StreamEvents`` responses; failures are mapped like :meth:`call`.

        Closing the generator (or cancelling its consumer) cancels the call.
        """
        request = copilot_pb2.StreamEventsRequest(
            session_id=session_id, after_sequence=after_sequence
        )
        call = self.stub.StreamEvents(request)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as error:
            raise map_rpc_error(error, socket_path=self.where) from error
        finally:
            call.cancel()

    async def watch_lifecycle(self) -> AsyncGenerator[copilot_pb2.LifecycleEvent | None, None]:
        """Yields None once the watch is live, then lifecycle events; failures mapped."""
        call = self.stub.WatchLifecycle(copilot_pb2.WatchLifecycleRequest())
        try:
            await call.initial_metadata()  # the daemon sends it once the watch is live
            yield None
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as error:
            raise map_rpc_error(error, socket_path=self.where) from error
        finally:
            call.cancel()
