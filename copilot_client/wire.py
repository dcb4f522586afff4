"""``copilot_client.wire``: the names and numbers both ends of the gRPC API agree on.

A public module: the daemon imports these constants instead of writing them a
second time, and a client in another language finds here (and in
``docs/protocol.md``) the values it must use. Only the standard library is
imported, so the daemon's transport-free core can use it too.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADDRESS_ENV",
    "CURRENT_SEQUENCE_METADATA_KEY",
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_EVENT_PAGE_SIZE",
    "DEFAULT_PAGE_SIZE",
    "ERROR_DOMAIN",
    "ERROR_INFO_CURRENT_SEQUENCE",
    "LIFECYCLE_CREATED",
    "LIFECYCLE_DELETED",
    "LIFECYCLE_TYPES",
    "LIFECYCLE_UPDATED",
    "MAX_PAGE_SIZE",
    "REASON_METADATA_KEY",
    "TOKEN_ENV",
]

# -- errors ------------------------------------------------------------------

REASON_METADATA_KEY: Final = "copilot-error-reason"
"""Trailing metadata with the ``ErrorReason`` name of a failed call (kept beside
the standard ``google.rpc.Status`` details for clients that read only trailers)."""

CURRENT_SEQUENCE_METADATA_KEY: Final = "copilot-current-sequence"
"""Trailing metadata of a ``SEQUENCE_CONFLICT``: the session's last sequence number."""

ERROR_DOMAIN: Final = "copilotd"
"""``google.rpc.ErrorInfo.domain`` of every error the daemon sends."""

ERROR_INFO_CURRENT_SEQUENCE: Final = "current_sequence"
"""``ErrorInfo.metadata`` key that carries what ``copilot-current-sequence`` does."""

# -- deadlines ---------------------------------------------------------------

# Seconds a unary call may take unless the client or the call says otherwise:
# long enough for a busy daemon, short enough that a frozen one is noticed.
# Here rather than in copilot_client.service so that the copilotd command can
# name it in its help without importing the client (the daemon's start).
DEFAULT_CALL_TIMEOUT: Final = 30.0

# -- lifecycle events (WatchLifecycle) ----------------------------------------

LIFECYCLE_CREATED: Final = "session.created"
LIFECYCLE_DELETED: Final = "session.deleted"
LIFECYCLE_UPDATED: Final = "session.updated"
LIFECYCLE_TYPES: Final = frozenset({LIFECYCLE_CREATED, LIFECYCLE_DELETED, LIFECYCLE_UPDATED})

# -- pages -------------------------------------------------------------------

DEFAULT_PAGE_SIZE: Final = 50
"""Sessions per ListSessions page when the request leaves ``page_size`` at 0."""

DEFAULT_EVENT_PAGE_SIZE: Final = 100
"""Events per ListEvents page when the request leaves ``page_size`` at 0."""

MAX_PAGE_SIZE: Final = 1000
"""The largest page the daemon returns; larger requests get this many."""

# -- environment -------------------------------------------------------------

TOKEN_ENV: Final = "COPILOTD_TOKEN"
"""The bearer token for the daemon's TCP port (read by the client and the daemon)."""

ADDRESS_ENV: Final = "COPILOTD_ADDRESS"
"""``HOST:PORT`` of the daemon's TCP port, used by the client instead of the socket."""
