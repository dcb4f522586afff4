"""One turn at a time per session, in arrival order; the rest wait in a durable queue.

A message sent while a session is busy is added to the session's pending
queue (persisted in its record, so an acknowledged message survives a crash)
and announced with a ``pending_messages.modified`` event. The session may be
busy on another daemon sharing the store: the store refuses to open a second
turn (``TurnBusyError``), and the message is queued there too, for whichever
daemon ends the running turn to start. When a turn's end
is committed, the first queued message starts at once, so every turn's events
stay contiguous in the log. ``mode=immediate`` puts the message first and
aborts the running turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from copilot_client.proto.v1 import copilot_pb2
from copilotd import events as ev
from copilotd.errors import ServiceError, SessionNotFoundError, TurnBusyError
from copilotd.events import SessionEvent
from copilotd.sessions.state import RunningTurn, SessionState, TurnHost
from copilotd.store import PendingMessage, QueueEdit, SessionRecord

if TYPE_CHECKING:
    from copilotd.sessions.turns import TurnEngine

log = logging.getLogger(__name__)

SendMode = copilot_pb2.SendMode
SUPERSEDED = "superseded by a message sent with mode=immediate"


class TurnScheduler:
    """Decides which message's turn runs next; the host calls it (see ``TurnHost``)."""

    def __init__(self, host: TurnHost, turns: TurnEngine) -> None:
        self._host = host
        self._turns = turns
        self._starting: set[asyncio.Task[None]] = set()

    async def send(
        self,
        session_id: str,
        state: SessionState,
        user: SessionEvent,
        *,
        mode: int,
        expected_last_sequence: int | None,
        record: SessionRecord | None = None,
    ) -> tuple[SessionEvent, bool]:
        """Start a turn for ``user`` now, or queue it; returns the event and whether it queued.

        A queued message's event has no sequence number yet: it gets one
        when its turn starts. ``record``: the session's, if just read.
        """
        if state.turn is None and not state.pending:
            turn = self._turns.claim(state, session_id, user.id)
            try:
                stored = await self._turns.begin(
                    turn, user, expected_last_sequence=expected_last_sequence, record=record
                )
            except TurnBusyError:
                pass  # another daemon's turn is running: queue behind it
            else:
                return stored, False
        pending = PendingMessage(
            message_id=user.id,
            content=user.user_message.content,
            source=user.user_message.source,
            enqueued_time=user.timestamp,
        )
        immediate = mode == SendMode.SEND_MODE_IMMEDIATE
        # Changed before the commit so concurrent senders queue behind it;
        # commits run in submission order, so the last one holds the full queue.
        if immediate:
            state.pending.insert(0, pending)
        else:
            state.pending.append(pending)
        try:
            committed, _ = await self._host.append(
                session_id,
                [],
                queue=QueueEdit(add=pending, first=immediate),
                expected_last_sequence=expected_last_sequence,
            )
        except BaseException:
            with contextlib.suppress(ValueError):
                state.pending.remove(pending)
            raise
        self.announce(session_id, state)
        running = state.turn
        if running is None:
            # An earlier start failed, or another daemon's turn runs (its
            # lease then refuses ours, and it starts the queue itself).
            if state.pending and not self._host.shutting_down:
                self.start_next(session_id, state)
            if immediate:  # the holder of the turn ends it, then starts this message
                try:
                    await self._host.abort_elsewhere(committed, SUPERSEDED)
                except ServiceError as error:
                    # Queued first all the same: it runs as soon as that turn ends.
                    log.warning(
                        "session %s: the running turn was not superseded: %s", session_id, error
                    )
        elif immediate:
            await self._turns.cancel(running, reason=SUPERSEDED)
        return user, True

    def announce(self, session_id: str, state: SessionState) -> None:
        self._host.publish_ephemeral(
            session_id,
            ev.make_event(
                ev.PENDING_MESSAGES_MODIFIED, message_ids=[p.message_id for p in state.pending]
            ),
        )

    def after_turn(self, session_id: str, state: SessionState) -> None:
        """The session's turn is over: start the next queued message, or go idle.

        Runs synchronously right after the commit that closed the turn, so no
        new message can slip in ahead of the queue.
        """
        if state.pending and not state.queue_held and not self._host.shutting_down:
            self.start_next(session_id, state)
            return
        state.turn = None
        self._host.publish_ephemeral(session_id, ev.make_event(ev.SESSION_IDLE))

    def start_next(self, session_id: str, state: SessionState) -> None:
        queued = state.pending.pop(0)
        turn = self._turns.claim(state, session_id, queued.message_id)
        user = ev.make_event(ev.USER_MESSAGE, content=queued.content, source=queued.source)
        user.id = queued.message_id
        task = asyncio.get_running_loop().create_task(
            self._begin_queued(session_id, state, turn, user, queued)
        )
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _begin_queued(
        self,
        session_id: str,
        state: SessionState,
        turn: RunningTurn,
        user: SessionEvent,
        queued: PendingMessage,
    ) -> None:
        try:
            await self._turns.begin(turn, user, queue=QueueEdit(remove=queued.message_id))
        except SessionNotFoundError:
            return  # deleted meanwhile, queue and all
        except TurnBusyError:
            # Another daemon runs a turn (or holds the queue): it starts the
            # message when its turn ends; ours is the durable queue's copy.
            log.info("session %s: queued message %s left to another daemon", session_id, user.id)
            return
        except Exception as error:
            # It is still first in the durable queue: keep it first here too, so
            # that no later rewrite of the queue drops it. The next message sent
            # (or the next start of the daemon) tries again.
            state.pending.insert(0, queued)
            log.warning(
                "session %s: queued message %s not started, will retry: %s",
                session_id,
                user.id,
                error,
            )
            return
        self.announce(session_id, state)
