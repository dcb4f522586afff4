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

The clients holding tools count for a session whichever daemon they are
attached to: each daemon records its attached tool clients
(``ToolAttachment``, renewed with its leases, so a dead daemon's stop
counting once they expire); the daemon running the turn offers the model
their tools too, and asks one of them to run a call by an ``assign``
notification to its daemon, which sends ``external_tool.assigned`` (or
``permission.assigned``) on that client's stream. The client's answer
comes back as any ``HandlePendingToolCall`` through another daemon does.

A request nobody claimed may be withdrawn by its poster (its turn ended, or
it waited too long); a claimed one is answered by its claimer. A store used
by one daemon has no relay (``Store.relay`` is None): every turn runs there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

RequestKind = Literal["abort", "tool_result", "permission", "close_calls"]


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
class ToolAttachment:
    """A client attached through daemon ``daemon`` to a session, with its tools."""

    session_id: str
    client_id: str
    daemon: str
    # A serialized ``ToolClient``: its tool definitions and the calls it runs.
    tools: bytes
    permission_tools: tuple[str, ...]
    permission_handler: bool


@dataclass(frozen=True)
class Assignment:
    """The lease holder asks client ``client_id`` (attached to this daemon) to run
    or decide ``call_id`` of turn ``turn_id`` (``asking``: the permission request)."""

    session_id: str
    client_id: str
    turn_id: str
    call_id: str
    asking: bool


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

    @abstractmethod
    def attach_tools(self, attachment: ToolAttachment) -> None:
        """Record a client attached here (replacing its earlier row) until this daemon
        stops renewing it, and tell the session's lease holder."""

    @abstractmethod
    def detach_tools(self, session_id: str, client_id: str) -> None:
        """Remove this daemon's row of a client that went away, and tell the lease holder."""

    @abstractmethod
    def renew_attachments(self) -> None:
        """Extend this daemon's rows by a lease; delete every daemon's expired ones."""

    @abstractmethod
    def attachments(self, session_id: str) -> list[ToolAttachment]:
        """The unexpired rows of clients attached to other daemons, oldest first."""

    @abstractmethod
    def assign(self, daemon: str, assignment: Assignment) -> None:
        """Tell ``daemon`` to ask its attached client to run or decide a call (a
        notification: lost only with that daemon's listening connection)."""
