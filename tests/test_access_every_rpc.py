"""Over TCP, every method of both services refuses a call without the bearer token.

The token check is a server interceptor that must answer each call type
(unary, server-streaming, client-streaming) with a refusal of the same shape;
a check skipped for one shape (say, the client-streaming ``ImportSession``)
would let an unauthenticated peer write sessions. So each method is called
here with the arity the service descriptor gives it, read from the protos
rather than listed by hand, so that a new method is covered the day it is
added.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from copilot_client.proto.admin.v1 import admin_pb2
from copilot_client.proto.v1 import copilot_pb2
from tests.support.daemon_process import DaemonProcess, short_temp_dir
from tests.support.tcp_access import tcp_address, with_token, write_token

SERVICES: list[ServiceDescriptor] = [
    copilot_pb2.DESCRIPTOR.services_by_name["CopilotService"],
    admin_pb2.DESCRIPTOR.services_by_name["CopilotAdminService"],
]
METHODS: list[MethodDescriptor] = [m for service in SERVICES for m in service.methods]
CALL_TIMEOUT = 30


def method_path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


@pytest.fixture(scope="module")
def tcp_daemon() -> Iterator[tuple[DaemonProcess, str]]:
    root = short_temp_dir("tok")
    token = secrets.token_urlsafe(32)
    daemon = DaemonProcess(
        root, ["--listen", "127.0.0.1:0", "--token-file", str(write_token(root, token))]
    ).start()
    yield daemon, token
    daemon.kill()
    shutil.rmtree(root, ignore_errors=True)


async def call_with_its_arity(channel: grpc.aio.Channel, method: MethodDescriptor) -> None:
    """One call of ``method`` with an empty request (or a stream of one), read to its end."""
    identity = bytes
    path = method_path(method)
    if method.client_streaming:

        async def one_empty_request() -> AsyncIterator[bytes]:
            yield b""

        if method.server_streaming:  # pragma: no cover - no such method today
            stream = channel.stream_stream(path, identity, identity)(
                one_empty_request(), timeout=CALL_TIMEOUT
            )
            async for _ in stream:
                pass
        else:
            await channel.stream_unary(path, identity, identity)(
                one_empty_request(), timeout=CALL_TIMEOUT
            )
    elif method.server_streaming:
        async for _ in channel.unary_stream(path, identity, identity)(b"", timeout=CALL_TIMEOUT):
            pass
    else:
        await channel.unary_unary(path, identity, identity)(b"", timeout=CALL_TIMEOUT)


def test_every_call_type_is_covered() -> None:
    """The check below would prove little if a call type were missing from the services."""
    shapes = {(m.client_streaming, m.server_streaming) for m in METHODS}
    assert {(False, False), (False, True), (True, False)} <= shapes
    assert len(METHODS) >= 24, [m.name for m in METHODS]


@pytest.mark.parametrize("method", METHODS, ids=method_path)
async def test_no_token_no_call(
    tcp_daemon: tuple[DaemonProcess, str], method: MethodDescriptor
) -> None:
    daemon, token = tcp_daemon
    address = tcp_address(daemon)
    wrong = with_token(secrets.token_urlsafe(32))
    for channel in (grpc.aio.insecure_channel(address), grpc.aio.secure_channel(address, wrong)):
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call_with_its_arity(channel, method)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value.details()
        assert "bearer token" in (caught.value.details() or "")
    # The control: with the token the same call gets past the check (answered,
    # or refused for what it asked, never for who asked).
    async with grpc.aio.secure_channel(address, with_token(token)) as channel:
        try:
            await call_with_its_arity(channel, method)
        except grpc.aio.AioRpcError as error:
            assert error.code() != grpc.StatusCode.UNAUTHENTICATED, error.details()
