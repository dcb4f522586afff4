"""Permission requests, in the Copilot SDK's shapes: ``PermissionRequest``,
``PermissionInvocation``, ``PermissionRequestResult`` and ``PermissionHandler``.

The daemon asks before running a call of a tool declared without
``skip_permission`` (``permission.requested``) and waits, across restarts,
for one decision. A session holding the tool answers it with its
``on_permission_request`` handler; with no handler it denies (deny by
default: a tool that can act on the world runs only when someone said so).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("copilot_client.permissions")

APPROVED = "approved"
DENIED_BY_DEFAULT = "denied-no-approval-rule-and-could-not-request-from-user"
NO_HANDLER_REASON = "no permission handler: the client denies by default"
HANDLER_FAILED_REASON = "the permission handler failed; its client logged the details"


@dataclass(frozen=True)
class PermissionRequest:
    """What the model wants to do, as a permission handler receives it."""

    request_id: str
    """The id to decide on (the tool call's id)."""
    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any]
    kind: str = "custom-tool"
    """Always ``"custom-tool"`` here: the daemon runs no built-in tools."""


@dataclass(frozen=True)
class PermissionInvocation:
    session_id: str


@dataclass(frozen=True)
class PermissionRequestResult:
    """A decision: ``kind="approved"``, or a denial (any other kind, e.g.
    ``"denied-interactively-by-user"``), with an optional reason the model sees."""

    kind: str
    reason: str | None = None

    @property
    def approved(self) -> bool:
        return self.kind == APPROVED

    @classmethod
    def coerce(cls, value: object) -> PermissionRequestResult:
        """A handler's return value as a decision: a result, a dict like the
        Copilot SDK's (``{"kind": "approved"}``) or a bool."""
        if isinstance(value, PermissionRequestResult):
            return value
        if isinstance(value, bool):
            return cls(APPROVED if value else "denied-interactively-by-user")
        if isinstance(value, Mapping) and isinstance(value.get("kind"), str):
            reason = value.get("reason")
            return cls(value["kind"], reason if isinstance(reason, str) else None)
        raise TypeError(
            f"a permission handler returned {value!r}; return a PermissionRequestResult, "
            'a dict such as {"kind": "approved"}, or a bool'
        )


PermissionHandlerFunc = Callable[[PermissionRequest, PermissionInvocation], Any]


def _approve_all(
    request: PermissionRequest, invocation: PermissionInvocation
) -> PermissionRequestResult:
    return PermissionRequestResult(APPROVED)


class PermissionHandler:
    """Ready-made permission handlers (the Copilot SDK's ``PermissionHandler``)."""

    approve_all: PermissionHandlerFunc = staticmethod(_approve_all)
    """Approves every request."""


async def decide(
    handler: PermissionHandlerFunc | None, request: PermissionRequest, session_id: str
) -> PermissionRequestResult:
    """The handler's decision; none, or one that failed, denies."""
    if handler is None:
        return PermissionRequestResult(DENIED_BY_DEFAULT, NO_HANDLER_REASON)
    try:
        value = handler(request, PermissionInvocation(session_id))
        if inspect.isawaitable(value):
            value = await value
        return PermissionRequestResult.coerce(value)
    except Exception:
        log.exception(
            "permission handler failed on request %s of session %s",
            request.request_id,
            session_id,
        )
        return PermissionRequestResult("denied-by-rules", HANDLER_FAILED_REASON)
