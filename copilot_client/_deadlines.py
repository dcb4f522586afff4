"""A call's deadline, from a public method's ``timeout`` argument.

Apart from ``service`` (which re-exports these) because ``_client`` uses them
without importing grpc.
"""

from __future__ import annotations

import enum
import math
from typing import Final

__all__ = ["CALL_TIMEOUT", "UseCallTimeout", "per_call"]


class UseCallTimeout(enum.Enum):
    """The type of :data:`CALL_TIMEOUT`."""

    TOKEN = enum.auto()


# ServiceClient.call's default deadline: the client's call_timeout.
CALL_TIMEOUT: Final = UseCallTimeout.TOKEN


def per_call(timeout: float | None) -> float | UseCallTimeout | None:
    """The deadline for :meth:`ServiceClient.call` from a public method's ``timeout``
    argument: ``None`` is the client's default, ``math.inf`` no limit."""
    if timeout is None:
        return CALL_TIMEOUT
    return None if math.isinf(timeout) else timeout
