"""Requests that are not valid protobuf get INVALID_ARGUMENT, not UNKNOWN.

grpcio decodes a request before any servicer code runs, and reports a
decoding failure as UNKNOWN ("Unexpected DecodeError"), which tells a caller
nothing it can act on. This interceptor decodes leniently and lets the call
fail with INVALID_ARGUMENT and a message naming the expected message type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from copilotd.api.errors import abort_with
from copilotd.errors import InvalidArgumentError

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


class _Undecodable:
    def __init__(self, method: str, error: Exception) -> None:
        self.message = (
            f"the request to {method} is not a valid protobuf message of the type that method "
            f"takes ({error}); generate your client from protos/copilot_client/proto"
        )


async def _refuse(request: _Undecodable, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await abort_with(context, InvalidArgumentError(request.message))


class RequestDecoding(grpc.aio.ServerInterceptor):
    """Wraps unary-request handlers so that undecodable requests are refused cleanly."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        deserialize = handler.request_deserializer

        def lenient(data: bytes) -> Any:
            try:
                return deserialize(data)
            except DecodeError as error:
                return _Undecodable(method, error)

        if handler.response_streaming:
            stream: Any = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await _refuse(request, context)
                async for response in stream(request, context):
                    yield response

            return handler._replace(  # type: ignore[attr-defined, no-any-return]
                request_deserializer=lenient, unary_stream=unary_stream
            )
        unary: Any = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            if isinstance(request, _Undecodable):
                await _refuse(request, context)
            return await unary(request, context)

        return handler._replace(  # type: ignore[attr-defined, no-any-return]
            request_deserializer=lenient, unary_unary=unary_unary
        )
