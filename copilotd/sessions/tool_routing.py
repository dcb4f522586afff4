"""Which attached client runs each tool call, and which tools the model is offered.

A client holding tools attaches through its event stream (``StreamEvents``
with a ``ToolClient``): its tools belong to the session's tool set for as
long as that stream lasts. The model is offered the session's declarations
answered by hand (``has_handler`` false) and the tools of the clients
attached now, nothing a client that went away held.

Each open call goes to ONE attached client holding its tool, as a live-only
``external_tool.assigned`` event on that client's stream alone; a
permission request goes to one client deciding it (``permission.assigned``),
one with a permission handler first. When the assignee's stream ends before
it answered (the client went away, or was killed), the call goes to another
attached holder, or waits until one attaches. Assignments are the daemon's
memory only: the calls themselves are durable, so after a restart they are
assigned again as the clients re-attach, and a client still running a call
claims it back (``ToolClient.running_calls``). Whoever answers first is
recorded (``tool_calls``); assigning only decides who is asked.

On a store shared by several daemons, the clients attached through the
other daemons count too (``remote_tools``): the daemon running the turn
reads them before each model call, when one of their daemons reports a
change, and on every lease renewal (a dead daemon's stop counting once they
expire), and may assign a call to one of them; its own clients come first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from copilot_client.proto.v1 import copilot_pb2, events_pb2
from copilotd import events as ev
from copilotd.errors import InvalidArgumentError
from copilotd.events import SessionEvent
from copilotd.providers import ToolCall
from copilotd.sessions.fanout import Subscription
from copilotd.sessions.remote_tools import RemoteTools
from copilotd.sessions.state import RunningTurn
from copilotd.sessions.tools import check_tools, tool_specs
from copilotd.sessions.validation import check_label
from copilotd.store import StoreChange
from copilotd.store.relay import ToolAttachment

ToolDefinition = events_pb2.ToolDefinition
Batch = tuple[Sequence[SessionEvent], bool]
Subscribed = Callable[[Subscription[SessionEvent]], None]


@dataclass(eq=False)
class ToolClient:
    """A client attached to a session with its tools; ``deliver`` sends events
    on its stream alone (set once its subscription exists)."""

    session_id: str
    client_id: str
    tools: dict[str, ToolDefinition]
    permission_tools: frozenset[str]
    permission_handler: bool
    running_calls: frozenset[str]
    deliver: Callable[[Sequence[SessionEvent]], None] = field(default=lambda events: None)
    # Set for a client attached through another daemon (its calls go there).
    attachment: ToolAttachment | None = None

    @classmethod
    def from_proto(cls, session_id: str, proto: copilot_pb2.ToolClient) -> ToolClient:
        """Checked like a session's own declarations (INVALID_ARGUMENT naming the field)."""
        if not proto.client_id:
            raise InvalidArgumentError(
                "tool_client.client_id is empty; give each session handle an id of its own "
                "(a random UUID) so the daemon can tell its attached clients apart"
            )
        check_label(proto.client_id, "tool_client.client_id", 128)
        check_tools(proto.tools, "tool_client.tools")
        for index, name in enumerate(proto.permission_tools):
            check_label(name, f"tool_client.permission_tools[{index}]", 64)
        for index, call_id in enumerate(proto.running_calls):
            check_label(call_id, f"tool_client.running_calls[{index}]")
        return cls(
            session_id,
            proto.client_id,
            {tool.name: tool for tool in proto.tools},
            frozenset(proto.permission_tools),
            proto.permission_handler,
            frozenset(proto.running_calls),
        )

    @classmethod
    def remote(cls, attachment: ToolAttachment) -> ToolClient:
        """A client attached through another daemon, as that daemon recorded it."""
        proto = copilot_pb2.ToolClient.FromString(attachment.tools)
        return cls(
            attachment.session_id,
            attachment.client_id,
            {tool.name: tool for tool in proto.tools},
            frozenset(attachment.permission_tools),
            attachment.permission_handler,
            frozenset(proto.running_calls),
            attachment=attachment,
        )

    def to_proto(self) -> copilot_pb2.ToolClient:
        """What the other daemons need to offer and assign this client's tools."""
        return copilot_pb2.ToolClient(
            client_id=self.client_id,
            tools=list(self.tools.values()),
            permission_tools=sorted(self.permission_tools),
            permission_handler=self.permission_handler,
            running_calls=sorted(self.running_calls),
        )


def offered_tools(
    declared: Iterable[ToolDefinition], clients: Iterable[ToolClient]
) -> list[ToolDefinition]:
    """The tools the model may call now: the declarations answered by hand, then
    those of the attached clients (a name once, its first definition)."""
    tools = {tool.name: tool for tool in declared if not tool.has_handler}
    for client in clients:
        for name, tool in client.tools.items():
            tools.setdefault(name, tool)
    return list(tools.values())


def offer(turn: RunningTurn, clients: Iterable[ToolClient]) -> None:
    """Set the tools ``turn``'s next model call offers, and which of them skip the
    permission request or end the turn."""
    offered = offered_tools(turn.declared, clients)
    turn.tools = tool_specs(offered)
    turn.skip_permission = frozenset(tool.name for tool in offered if tool.skip_permission)
    # Declared ones too: a call waiting since before a restart ends the turn
    # as it would have, whoever attaches to answer it.
    turn.terminal = frozenset(tool.name for tool in [*turn.declared, *offered] if tool.is_terminal)


def _assignment(call: ToolCall, turn_id: str, asking: bool) -> SessionEvent:
    fields = {
        "tool_call_id": call.call_id,
        "tool_name": call.name,
        "arguments_json": call.arguments_json,
        "turn_id": turn_id,
    }
    if asking:
        return ev.make_event(ev.PERMISSION_ASSIGNED, request_id=call.call_id, **fields)
    return ev.make_event(ev.EXTERNAL_TOOL_ASSIGNED, **fields)


class ToolRoutes:
    """The clients attached to each session, and the assignment of its open calls."""

    def __init__(self) -> None:
        # Session id -> client id -> client, in the order they attached.
        self._clients: dict[str, dict[str, ToolClient]] = {}
        # Session id -> the clients attached through other daemons, as last read.
        self._remote: dict[str, list[ToolClient]] = {}
        # Set on a store shared by several daemons.
        self.remote: RemoteTools | None = None

    def clients(self, session_id: str) -> list[ToolClient]:
        """The session's tool clients: those attached here, then the other daemons'."""
        local = self._clients.get(session_id, {})
        remote = [c for c in self._remote.get(session_id, ()) if c.client_id not in local]
        return [*local.values(), *remote]

    async def refresh(self, session_id: str) -> None:
        """Read again which clients are attached to the session through other daemons."""
        if self.remote is None:
            return
        holders = [ToolClient.remote(row) for row in await self.remote.holders(session_id)]
        if holders:
            self._remote[session_id] = holders
        else:
            self._remote.pop(session_id, None)

    async def reroute(self, turn: RunningTurn | None) -> None:
        """``route`` with the other daemons' clients read again (a change reported,
        or a lease renewal: some may have gone away with their daemon)."""
        if turn is None:
            return
        await self.refresh(turn.session_id)
        self.route(turn)

    async def deliver_assigned(self, change: StoreChange) -> None:
        """Send a call another daemon assigned to a client attached here on its stream."""
        if self.remote is None:
            return
        found = await self.remote.assigned(change)
        if found is None:
            return  # answered or closed meanwhile
        assignment, call = found
        client = self._clients.get(assignment.session_id, {}).get(assignment.client_id)
        if client is not None:  # else gone: its detach makes the holder route again
            client.deliver([_assignment(call, assignment.turn_id, assignment.asking)])

    def attach(self, session_id: str, client: ToolClient) -> None:
        """Add ``client`` (replacing an earlier stream of the same client)."""
        clients = self._clients.setdefault(session_id, {})
        clients.pop(client.client_id, None)
        clients[client.client_id] = client

    def detach(self, session_id: str, client: ToolClient) -> bool:
        """Remove ``client``; False when a newer stream of it replaced it already."""
        clients = self._clients.get(session_id)
        if clients is None or clients.get(client.client_id) is not client:
            return False
        del clients[client.client_id]
        if not clients:
            del self._clients[session_id]
        return True

    async def follow(
        self,
        client: ToolClient,
        events: Callable[[Subscribed], AsyncGenerator[Batch]],
        running_turn: Callable[[], RunningTurn | None],
        stamp: Callable[[SessionEvent], None],
    ) -> AsyncGenerator[Batch]:
        """The session's ``events`` (``History.follow``), with ``client`` attached from
        its subscription on (its calls queue behind the catch-up) until the stream
        ends, when its open calls go to another client. ``stamp`` dates a live-only
        event like the session's others."""
        session_id = client.session_id
        # The write recording the client for the other daemons (a shared store).
        recorded: asyncio.Future[None] | None = None

        def subscribed(subscription: Subscription[SessionEvent]) -> None:
            def deliver(assigned: Sequence[SessionEvent]) -> None:
                for event in assigned:
                    stamp(event)
                subscription.send(assigned)

            client.deliver = deliver
            self.attach(session_id, client)
            nonlocal recorded
            if self.remote is not None:
                recorded = asyncio.ensure_future(
                    self.remote.attach(session_id, client.client_id, client.to_proto())
                )
            self.route(running_turn())

        try:
            stream = events(subscribed)
            async with contextlib.aclosing(stream):
                async for batch in stream:
                    if recorded is not None:
                        # Once its first events arrive, the client counts on every daemon
                        # (or, the write failed and logged, on this one only).
                        await asyncio.wait({recorded})
                    yield batch
        finally:
            if self.detach(session_id, client):
                if self.remote is not None and recorded is not None:
                    self.remote.spawn(self.remote.detach(session_id, client.client_id, recorded))
                self.route(running_turn())

    def route(self, turn: RunningTurn | None) -> None:
        """Send each open call (or permission request) of ``turn`` whose assignee is
        not attached to one attached client that answers it."""
        if turn is None or turn.closing:
            return
        clients = {client.client_id: client for client in self.clients(turn.session_id)}
        open_now = {(call_id, call_id in turn.awaiting_permission) for call_id in turn.open_calls}
        for key in [key for key in turn.assigned if key not in open_now]:
            del turn.assigned[key]  # answered, decided or closed
        for call_id, call in turn.open_calls.items():
            asking = call_id in turn.awaiting_permission
            key = (call_id, asking)
            if turn.assigned.get(key) in clients:
                continue
            client = self._choose(clients.values(), call, asking)
            if client is None:
                turn.assigned.pop(key, None)  # waits for a holder to attach
                continue
            turn.assigned[key] = client.client_id
            if client.attachment is not None and self.remote is not None:
                self.remote.assign(client.attachment, call, turn.turn_id, asking)
            else:
                client.deliver([_assignment(call, turn.turn_id, asking)])

    @staticmethod
    def _choose(clients: Iterable[ToolClient], call: ToolCall, asking: bool) -> ToolClient | None:
        """The client already running ``call`` (after a lost connection), else the
        first attached one answering it: for a permission request, one with a
        handler before one that would deny by default."""
        if asking:
            deciders = [client for client in clients if call.name in client.permission_tools]
            deciders.sort(key=lambda client: not client.permission_handler)  # stable
            return deciders[0] if deciders else None
        holders = [client for client in clients if call.name in client.tools]
        for client in holders:
            if call.call_id in client.running_calls:
                return client
        return holders[0] if holders else None
