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
from grpc_health.v1 import health_pb2

ResponseT = TypeVar("ResponseT")

REASON_TRAILER = "copilot-error-reason"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


@dataclass
class WireError:
    """What a failed call carries on the wire."""

    code: grpc.StatusCode
    reason: str
    details: str


async def wire_error(call: Awaitable[object]) -> WireError:
    """The error ``call`` fails with; the test fails if it succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    return WireError(error.code(), str(reason_of(error)), error.details() or "")


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
