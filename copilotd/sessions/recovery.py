"""Closing the turns no daemon runs any more: after a crash, or a dead peer's.

At start-up a daemon closes the turns its previous run left open; on a store
shared by several daemons it does so periodically for the sessions whose
daemon's lease expired, taking their lease first so that only one survivor
closes each turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from copilotd import events as ev
from copilotd.errors import SessionNotFoundError, TurnBusyError, TurnTakenOverError
from copilotd.sessions.scheduler import TurnScheduler
from copilotd.sessions.state import SessionState, TurnHost
from copilotd.sessions.store_errors import store_errors
from copilotd.sessions.tools import interrupted_completes
from copilotd.sessions.turns import TurnEngine
from copilotd.store import SessionRecord
from copilotd.store.committer import GroupCommitter

log = logging.getLogger(__name__)

INTERRUPTED_AT_RESTART = "interrupted by daemon restart"
TAKEN_OVER = "interrupted: the daemon running it stopped (its lease expired)"


class TurnRecovery:
    """Finds the turns left open in the store and closes them as interrupted."""

    def __init__(
        self,
        host: TurnHost,
        committer: GroupCommitter,
        state_of: Callable[[SessionRecord], SessionState],
        turns: TurnEngine,
        scheduler: TurnScheduler,
    ) -> None:
        self._host = host
        self._committer = committer
        self._state_of = state_of
        self._turns = turns
        self._scheduler = scheduler

    async def recover_interrupted_turns(self) -> int:
        """Close the turns a crash left open, then run the messages still queued.

        At start-up, and then periodically on a store shared by several
        daemons: there it takes over the sessions whose daemon's lease
        expired (``Store.sessions_with_open_turns`` leaves out live ones).
        Returns how many turns were closed as interrupted.
        """
        closed = 0
        store = self._host.store
        # Every lease renewal on a database server: not on the event loop.
        found = (
            await asyncio.to_thread(store.sessions_with_open_turns)
            if store.shared
            else store.sessions_with_open_turns()
        )
        for record in found:
            session_id = record.metadata.session_id
            state = self._state_of(record)
            if state.turn is not None:
                continue  # running here: not interrupted
            if not state.queue_held:
                state.pending[:] = record.pending
            if record.open_turn_id:
                try:
                    # The lease first: whatever follows is this daemon's turn now.
                    previous = await self._take_over(session_id)
                except (TurnBusyError, SessionNotFoundError):
                    continue  # another daemon renewed or deleted it meanwhile
                pending_calls = record.metadata.pending_tool_calls
                if pending_calls and self._turns.wait_again(state, record):
                    continue
                try:
                    await self._close_interrupted(
                        record, TAKEN_OVER if previous else INTERRUPTED_AT_RESTART
                    )
                except (TurnBusyError, TurnTakenOverError, SessionNotFoundError):
                    continue  # another daemon closed or deleted it meanwhile
                closed += 1
            elif state.pending:
                self._scheduler.start_next(session_id, state)
        return closed

    async def _take_over(self, session_id: str) -> str:
        """Take the session's lease; the previous owner if it was another daemon's."""
        with store_errors(session_id):
            return await self._committer.submit(lambda writer: writer.take_over(session_id))

    async def _close_interrupted(self, record: SessionRecord, why: str) -> None:
        """Close a turn left open (this daemon's before a restart, or a dead daemon's)."""
        session_id, turn_id = record.metadata.session_id, record.open_turn_id
        completes = interrupted_completes(record.metadata.pending_tool_calls, turn_id, why)
        end = ev.make_event(
            ev.ASSISTANT_TURN_END,
            turn_id=turn_id,
            user_message_id=record.open_turn_user_message_id,
            reason=ev.TurnEndReason.TURN_END_REASON_INTERRUPTED,
            message=why,
        )
        # Its commit hands the session to the first queued message, if any.
        await self._host.append(session_id, [*completes, end], close_turn=True, fence=turn_id)
        log.warning("session %s: closed turn %s: %s", session_id, turn_id, why)
