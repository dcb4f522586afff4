"""The one place where the daemon's domain errors become gRPC statuses.

A ``ServiceError`` travels twice, for two kinds of reader:

- as the standard ``google.rpc.Status`` (trailer ``grpc-status-details-bin``)
  with one ``google.rpc.ErrorInfo`` detail: ``reason`` is the ``ErrorReason``
  name, ``domain`` is ``copilotd``, ``metadata`` holds what helps the caller
  recover (e.g. ``current_sequence``). Generic gRPC tooling in any language
  reads it (``grpc_status.rpc_status.from_call`` in Python);
- as the trailers earlier clients read: ``copilot-error-reason`` with the same
  name, and one ``copilot-*`` trailer per metadata entry that had one.

Anything that is not a ``ServiceError`` becomes INTERNAL with a fixed message;
the details go to the daemon's log only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Final, NamedTuple

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from copilot_client.wire import (
    CURRENT_SEQUENCE_METADATA_KEY,
    ERROR_DOMAIN,
    ERROR_INFO_CURRENT_SEQUENCE,
    REASON_METADATA_KEY,
)
from copilotd.errors import Reason, ServiceError

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]

INTERNAL_MESSAGE: Final = "internal error in copilotd; the daemon log has the details"

# ErrorInfo metadata key -> the trailer that carried it before google.rpc.Status.
_LEGACY_TRAILERS: Final = {ERROR_INFO_CURRENT_SEQUENCE: CURRENT_SEQUENCE_METADATA_KEY}


class WireStatus(NamedTuple):
    """A failed call's status as it goes on the wire."""

    code: grpc.StatusCode
    message: str
    trailers: tuple[tuple[str, str | bytes], ...]


def wire_status_for(error: ServiceError) -> WireStatus:
    """The status, message and trailing metadata that represent ``error`` on the wire."""
    reason_name = Reason.Name(error.reason)
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(
            reason=reason_name, domain=ERROR_DOMAIN, metadata=error.metadata
        )
    )
    status = rpc_status.to_status(
        status_pb2.Status(
            code=grpc.StatusCode[error.status].value[0], message=error.message, details=[detail]
        )
    )
    legacy = tuple(
        (_LEGACY_TRAILERS[key], value)
        for key, value in error.metadata.items()
        if key in _LEGACY_TRAILERS
    )
    return WireStatus(
        status.code,
        status.details,
        (*status.trailing_metadata, (REASON_METADATA_KEY, reason_name), *legacy),
    )


async def abort_with(context: Context, error: ServiceError) -> None:
    """Ends the call with ``error``'s status (raises, as ``context.abort`` does)."""
    status = wire_status_for(error)
    context.set_trailing_metadata(status.trailers)
    await context.abort(status.code, status.message)


@contextlib.asynccontextmanager
async def translate_errors(context: Context, method: str) -> AsyncIterator[None]:
    """Turns what the block raises into the call's status (see the module docstring)."""
    try:
        yield
    except ServiceError as error:
        await abort_with(context, error)
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("%s failed", method)
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
