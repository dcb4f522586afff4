"""Raw gRPC calls for tests that check the wire itself: errors, streams, health.

grpc's type stubs type a stream's ``read()`` as ``object`` and the health
service's stub without methods; these helpers give tests typed values instead
of a ``# type: ignore`` at every call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from copilot_client.service import map_rpc_error
from copilot_client.wire import ERROR_DOMAIN

ResponseT = TypeVar("ResponseT")

REASON_TRAILER = "copilot-error-reason"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


@dataclass
class WireError:
    """What a failed call carries on the wire."""

    code: grpc.StatusCode
    reason: str
    details: str
    info: error_details_pb2.ErrorInfo
    """The google.rpc.ErrorInfo detail, as generic gRPC tooling reads it."""
    mapped: Exception
    """What copilot_client raises for this error."""


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The one ErrorInfo of a failed call's google.rpc.Status (checked to agree with it)."""
    # from_call reads only code(), details() and trailing_metadata(), which a
    # failed aio call has too; it raises if the Status disagrees with them.
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None, "no google.rpc.Status in grpc-status-details-bin"
    [detail] = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info), detail.type_url
    return info


async def wire_error(call: Awaitable[object]) -> WireError:
    """The error ``call`` fails with, read as generic gRPC tooling and as the client
    read it; the test fails if the call succeeds or the two readings disagree."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    reason = str(reason_of(error))
    info = error_info(error)
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)
    return WireError(
        error.code(),
        reason,
        error.details() or "",
        info,
        map_rpc_error(error, socket_path="daemon.sock"),
    )


def reason_of(error: grpc.RpcError) -> str | None:
    """The ``copilot-error-reason`` trailer of ``error`` (sync or aio), if it has one."""
    # Both kinds iterate as (key, value) pairs: aio's Metadata by design, sync
    # ones as namedtuples, which grpc's stubs type as attribute-only objects.
    pairs = cast("Iterable[tuple[str, str | bytes]]", error.trailing_metadata() or ())
    for key, value in pairs:
        if key == REASON_TRAILER:
            return value if isinstance(value, str) else value.decode()
    return None


async def read_response(call: grpc.aio.UnaryStreamCall[Any, ResponseT]) -> ResponseT:
    """The stream's next response; the test fails if the stream has ended instead."""
    response = await call.read()
    assert response is not grpc.aio.EOF, "the stream ended before the next response"
    # grpc's stubs type read() as ``object | response``: EOF, excluded above, is the object.
    return cast(ResponseT, response)


def health_check(
    channel: grpc.aio.Channel, service: str = ""
) -> grpc.aio.UnaryUnaryCall[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]:
    """The standard health check of ``service`` ("" is the whole server)."""
    check: grpc.aio.UnaryUnaryMultiCallable[
        health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
    ] = channel.unary_unary(
        HEALTH_CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    return check(health_pb2.HealthCheckRequest(service=service))
