"""Tool clients attached to the other daemons of a shared store.

A client's tools count for its session whichever daemon its stream goes
through. Each daemon records the clients attached to it in the store
(``Relay.attach_tools``, renewed with its leases, removed when the stream
ends) and tells the daemon running the session's turn; that daemon reads the
other daemons' rows (``holders``) to offer the model their tools and to
choose who runs each call. A call given to a client on another daemon goes
there as an ``assign`` notification (``assign``); that daemon sends the
assignment on the client's stream (``assigned``), and the client's answer
comes back through ``HandlePendingToolCall`` as any relayed answer does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable

from copilot_client.proto.v1 import copilot_pb2
from copilotd.providers import ToolCall
from copilotd.store import Store, StoreChange
from copilotd.store.relay import Assignment, Relay, ToolAttachment

log = logging.getLogger(__name__)


class RemoteTools:
    """This daemon's side of the store's ``tool_attachments`` (module docstring)."""

    def __init__(self, store: Store) -> None:
        assert store.relay is not None, "only a shared store has other daemons"
        self._store = store
        self._relay: Relay = store.relay
        self._tasks: set[asyncio.Task[None]] = set()

    async def attach(
        self,
        session_id: str,
        client_id: str,
        tools: copilot_pb2.ToolClient,
    ) -> None:
        """Record a client attached here, so the daemon running the turn counts it."""
        attachment = ToolAttachment(
            session_id,
            client_id,
            self._store.lease_owner,
            tools.SerializeToString(),
            tuple(tools.permission_tools),
            tools.permission_handler,
        )
        try:
            await asyncio.to_thread(self._relay.attach_tools, attachment)
        except Exception:  # the client still counts here, where its stream is
            log.exception("session %s: recording tool client %s failed", session_id, client_id)

    async def detach(self, session_id: str, client_id: str, attached: Awaitable[None]) -> None:
        """Remove a client's row once its ``attached`` write is done (never before it,
        or the row would outlive the stream until it expires)."""
        try:
            await attached  # never raises: ``attach`` logs its failure
        finally:
            await asyncio.to_thread(self._relay.detach_tools, session_id, client_id)

    async def holders(self, session_id: str) -> list[ToolAttachment]:
        """The clients attached to the session through the other daemons now."""
        return await asyncio.to_thread(self._relay.attachments, session_id)

    def assign(
        self, attachment: ToolAttachment, call: ToolCall, turn_id: str, asking: bool
    ) -> None:
        """Ask a client of another daemon to run (or decide) ``call``."""
        assignment = Assignment(
            attachment.session_id, attachment.client_id, turn_id, call.call_id, asking
        )
        self.spawn(asyncio.to_thread(self._relay.assign, attachment.daemon, assignment))

    async def assigned(self, change: StoreChange) -> tuple[Assignment, ToolCall] | None:
        """The assignment another daemon sent here, with its call as the store holds it
        (None when that call is no longer open)."""
        fields = json.loads(change.payload)
        assignment = Assignment(
            change.session_id, fields["c"], fields["u"], fields["i"], bool(fields["p"])
        )
        record = await asyncio.to_thread(self._store.get_session, change.session_id)
        if record is None:
            return None
        for pending in record.metadata.pending_tool_calls:
            if pending.tool_call_id == assignment.call_id:
                call = ToolCall(pending.tool_call_id, pending.tool_name, pending.arguments_json)
                return assignment, call
        return None

    async def renew(self) -> None:
        """Keep this daemon's rows alive another lease (on every lease renewal)."""
        await asyncio.to_thread(self._relay.renew_attachments)

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(_logged(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _logged(work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:  # the lease renewal's routing tries again
        log.exception("recording or assigning a tool client on another daemon failed")
