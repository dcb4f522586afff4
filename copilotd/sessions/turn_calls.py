"""The API's calls on a running turn: abort it, answer one of its tool calls,
decide one of its permission requests, close its calls on a resume that does
not continue pending work.

Served here when the turn runs here (or none runs); when the session's open
turn may run on another daemon sharing the store, relayed to it
(``relay.TurnRelay``), so the caller gets the answer that daemon gives.
"""

from __future__ import annotations

from collections.abc import Callable

from copilot_client.proto.v1 import events_pb2
from copilotd.sessions.history import StoreReads
from copilotd.sessions.relay import TurnRelay
from copilotd.sessions.remote_tools import RemoteTools
from copilotd.sessions.state import SessionState
from copilotd.sessions.tools import check_result
from copilotd.sessions.turns import TurnEngine
from copilotd.sessions.validation import check_label
from copilotd.store import SessionRecord

DEFAULT_ABORT_REASON = "aborted by a client"


class TurnCalls:
    """``SessionService.abort_turn``, ``handle_pending_tool_call`` and
    ``handle_pending_permission``; ``relay`` is None on a store of one daemon."""

    def __init__(
        self,
        reads: StoreReads,
        record_of: Callable[[str], SessionRecord],
        states: dict[str, SessionState],
        state_of: Callable[[SessionRecord], SessionState],
        turns: TurnEngine,
    ) -> None:
        self._reads = reads
        self._record_of = record_of
        self._states = states
        self._state_of = state_of
        self._turns = turns
        self.relay = (
            None
            if reads.store.relay is None
            else TurnRelay(reads.store, states, lambda sid: state_of(record_of(sid)), turns)
        )
        if reads.store.relay is not None:
            turns.calls.routes.remote = RemoteTools(reads.store)

    async def abort_turn(self, session_id: str, reason: str) -> bool:
        """Stop the session's running turn and wait for its end; False when none runs."""
        check_label(reason, "reason")
        record = await self._reads(self._record_of, session_id)
        state = self._states.get(session_id)
        if state is not None and state.turn is not None:
            await self._turns.cancel(state.turn, reason=reason or DEFAULT_ABORT_REASON)
            return True
        return await self.abort_elsewhere(record, reason or DEFAULT_ABORT_REASON)

    async def abort_elsewhere(self, record: SessionRecord, reason: str) -> bool:
        """Abort the session's open turn where it runs, when that is another daemon."""
        return False if self.relay is None else await self.relay.abort(record, reason)

    async def close_not_continued(self, record: SessionRecord, state: SessionState) -> bool:
        """Close the open turn's calls on ``ResumeSession(continue_pending_work=false)``,
        where the turn runs; True when some were."""
        if self.relay is not None and self.relay.elsewhere(record, state):
            return await self.relay.close_calls(record)
        return await self._turns.calls.close_not_continued(state)

    async def handle_pending_tool_call(
        self, session_id: str, tool_call_id: str, result: events_pb2.ToolResult
    ) -> bool:
        """Record a client's result for a waiting call; False when it was already (a retry)."""
        check_label(tool_call_id, "tool_call_id")
        check_result(result)
        record = await self._reads(self._record_of, session_id)
        state = self._state_of(record)
        if self.relay is not None and self.relay.elsewhere(record, state):
            return await self.relay.tool_result(record, tool_call_id, result)
        return await self._turns.calls.answer(state, session_id, tool_call_id, result)

    async def handle_pending_permission(
        self, session_id: str, request_id: str, *, approved: bool, reason: str
    ) -> bool:
        """Record the first decision on a permission request; False for the same one again."""
        check_label(request_id, "request_id")
        check_label(reason, "reason")  # like an abort's reason
        record = await self._reads(self._record_of, session_id)
        state = self._state_of(record)
        if self.relay is not None and self.relay.elsewhere(record, state):
            return await self.relay.permission(record, request_id, approved, reason)
        return await self._turns.calls.decide(
            state, session_id, request_id, approved=approved, reason=reason
        )
