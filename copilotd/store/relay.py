"""Requests for the daemon running a session's turn, relayed through a shared store.

On a store shared by several daemons, a client attached to daemon B may ask
for something only the daemon running the session's turn (A) can do: abort
the turn, answer one of its tool calls, decide one of its permission
requests. B posts a ``TurnRequest`` in the store; the store tells the lease
holder at once (a notification) and A also finds it when it renews its
leases, so a lost notification costs latency, never the request. A claims
the request (only one daemon ever acts on it), acts as it would on a call of
its own client, and stores the ``RequestAnswer``, which B hands back to its
caller: the caller gets the answer it would have got from A.

A request nobody claimed may be withdrawn by its poster (its turn ended, or
it waited too long); a claimed one is answered by its claimer. A store used
by one daemon has no relay (``Store.relay`` is None): every turn runs there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

RequestKind = Literal["abort", "tool_result", "permission"]


@dataclass(frozen=True)
class TurnRequest:
    """A call for the daemon running turn ``turn_id`` of session ``session_id``."""

    session_id: str
    turn_id: str
    kind: RequestKind
    # The tool call or permission request it is about ("" for an abort).
    subject: str = ""
    # An abort's or a permission decision's reason.
    reason: str = ""
    approved: bool = False
    # A tool result (a serialized ``ToolResult``).
    result: bytes = b""
    # Set by ``Relay.post``.
    request_id: int = 0


@dataclass(frozen=True)
class RequestAnswer:
    """What the call returned on the daemon that served it, or the error it raised."""

    value: bool = False
    # The error's ``google.rpc.Code`` name ("" when the call succeeded).
    status: str = ""
    reason: int = 0
    message: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


class Relay(ABC):
    """A shared store's mailbox of ``TurnRequest`` values (module docstring).

    Every method is a short transaction; they may run in any thread.
    """

    @abstractmethod
    def post(self, request: TurnRequest) -> int:
        """Store ``request`` and tell the session's lease holder; returns the request's id."""

    @abstractmethod
    def waiting(self) -> list[TurnRequest]:
        """The unclaimed requests of the sessions whose lease this store holds, oldest first."""

    @abstractmethod
    def claim(self, request_id: int) -> bool:
        """Take the request to act on it; False when it was claimed or withdrawn already."""

    @abstractmethod
    def answer(self, request: TurnRequest, answer: RequestAnswer) -> None:
        """Store the answer to a claimed request and tell its poster."""

    @abstractmethod
    def answer_of(self, request_id: int) -> RequestAnswer | None:
        """The request's answer, once there is one."""

    @abstractmethod
    def withdraw(self, request_id: int) -> bool:
        """Remove the request unless it was claimed; whether it was removed."""

    @abstractmethod
    def forget(self, request_id: int) -> None:
        """Remove the request, answered or not (its poster is done with it)."""

    @abstractmethod
    def publish_live(self, session_id: str, last_sequence: int, event: bytes) -> None:
        """Send a live-only event (a serialized ``SessionEvent``) to the other daemons,
        best-effort: it may be dropped, never delayed behind later work. ``last_sequence``:
        the sequence of the session's last stored event when it was made."""
