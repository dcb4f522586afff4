"""gRPC server reflection, imported on its first call rather than at start.

Reflection (what ``grpcurl`` and ``grpcui`` use) brings grpc_reflection and
protobuf's ``descriptor_pb2``: about 2% of the instructions a daemon runs
before its socket listens, on the path of every auto-start, for a service
that tools call now and then. grpc only takes handlers before the server
starts, so a handler for the reflection service is registered then, and it
loads the real one when a reflection call arrives (tests/test_import_budget.py,
tests/test_observability.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

__all__ = ["REFLECTION_SERVICE", "LazyReflection"]

# grpc_reflection.v1alpha.reflection.SERVICE_NAME, without importing it.
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"


class LazyReflection(grpc.GenericRpcHandler):
    """Serves reflection on ``service_names`` (which should name the reflection
    service too), importing grpc_reflection on the first reflection call."""

    def __init__(self, service_names: Sequence[str]) -> None:
        self._service_names = tuple(service_names)
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] | None = None

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if service != REFLECTION_SERVICE:
            return None
        if self._handlers is None:
            self._handlers = _reflection_handlers(self._service_names)
        return self._handlers.get(method)


def _reflection_handlers(
    service_names: tuple[str, ...],
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    from grpc_reflection.v1alpha import reflection, reflection_pb2

    servicer = reflection.aio.ReflectionServicer(service_names)
    return {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
