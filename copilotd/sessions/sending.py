"""The send path: a user message checked, recorded once, and its turn started or queued.

A message may carry an id of the client's choosing; sending it again (a
client retrying across an outage) returns the message as recorded, or waits
for its turn, rather than recording it twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from copilot_client.proto.v1 import copilot_pb2
from copilotd import events as ev
from copilotd.errors import MessageAlreadyAnsweredError, MessageIdTakenError, ShuttingDownError
from copilotd.events import SessionEvent
from copilotd.sessions.history import History
from copilotd.sessions.peers import Delivery
from copilotd.sessions.scheduler import TurnScheduler
from copilotd.sessions.state import SessionState, TurnHost, TurnOutcome
from copilotd.sessions.validation import check_enum, check_label, check_message_id, check_prompt
from copilotd.store import SessionRecord


class MessageSender:
    """``SessionService.send_message`` and ``send_message_and_wait``."""

    def __init__(
        self,
        host: TurnHost,
        history: History,
        delivery: Delivery,
        scheduler: TurnScheduler,
        record_of: Callable[[str], SessionRecord],
        state_of: Callable[[SessionRecord], SessionState],
    ) -> None:
        self._host = host
        self._history = history
        self._delivery = delivery
        self._scheduler = scheduler
        self._record_of = record_of
        self._state_of = state_of
        self._reads = history.reads

    async def send_message(
        self,
        session_id: str,
        prompt: str,
        source: str,
        *,
        mode: int = 0,
        expected_last_sequence: int | None = None,
        message_id: str = "",
    ) -> tuple[SessionEvent, bool]:
        """Persist the user message and start its turn, or queue it behind the running one.

        Returns the user.message (its sequence is 0 while queued) and whether
        it queued. A ``message_id`` this session already holds is not
        recorded again: the message as it stands is returned.
        """
        state, user, record = await self._prepare_send(session_id, prompt, source, mode, message_id)
        known = await self._known(state, session_id, user.id, message_id)
        if known is not None:
            return known
        state.check_sequence(session_id, expected_last_sequence)
        try:
            return await self._scheduler.send(
                session_id,
                state,
                user,
                mode=mode,
                expected_last_sequence=expected_last_sequence,
                record=record,
            )
        except MessageIdTakenError:
            # The store's check, in the writing transaction: recorded meanwhile.
            if (known := self._history.logged_message(session_id, message_id)) is not None:
                return known
            raise

    async def send_message_and_wait(
        self,
        session_id: str,
        prompt: str,
        source: str,
        *,
        mode: int = 0,
        expected_last_sequence: int | None = None,
        message_id: str = "",
    ) -> TurnOutcome:
        """``send_message``, then wait for the end of the message's turn.

        Cancelling the wait leaves the turn running. A ``message_id`` that is
        queued or running is waited for rather than sent again; one whose
        turn has ended raises ``MessageAlreadyAnsweredError``.
        """
        state, user, record = await self._prepare_send(session_id, prompt, source, mode, message_id)
        known = await self._known(state, session_id, user.id, message_id)
        if (
            known is not None
            and not known[1]
            and (state.turn is None or state.turn.user_message_id != user.id)
        ):
            raise MessageAlreadyAnsweredError(session_id, user.id)
        if known is None:
            state.check_sequence(session_id, expected_last_sequence)
        # Registered before sending: the turn may end before the send returns.
        waiter = state.turn_waiters.get(user.id)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            state.turn_waiters[user.id] = waiter
        if known is None:
            try:
                await self._scheduler.send(
                    session_id,
                    state,
                    user,
                    mode=mode,
                    expected_last_sequence=expected_last_sequence,
                    record=record,
                )
            except BaseException as error:
                if state.turn_waiters.get(user.id) is waiter:
                    del state.turn_waiters[user.id]
                if waiter.done() and not waiter.cancelled():
                    waiter.exception()  # failed by a racing delete; this error says it
                if isinstance(error, MessageIdTakenError) and self._history.logged_message(
                    session_id, message_id
                ):
                    raise MessageAlreadyAnsweredError(session_id, user.id) from None
                raise
        # Shielded: a caller that gives up leaves the waiter to others sending
        # the same id again; the turn's end resolves and removes it.
        return await asyncio.shield(waiter)

    async def _known(
        self, state: SessionState, session_id: str, user_id: str, message_id: str
    ) -> tuple[SessionEvent, bool] | None:
        """The message ``user_id`` as the session holds it (queued, running or, for a
        ``message_id`` of the client's, logged), or None.

        The log is read off the event loop; the in-memory state is looked at
        again after it, with no await before the caller acts on the answer, so
        a send of the same id racing this one is seen.
        """
        if (known := state.known_message(user_id)) is not None or not message_id:
            return known
        logged = await self._reads(self._history.logged_message, session_id, message_id)
        return state.known_message(user_id) or logged

    async def _prepare_send(
        self, session_id: str, prompt: str, source: str, mode: int, message_id: str
    ) -> tuple[SessionState, SessionEvent, SessionRecord]:
        """Check a send and build its user.message; nothing is written."""
        if self._host.shutting_down:
            raise ShuttingDownError()
        check_prompt(prompt, self._host.max_prompt_bytes)
        check_label(source, "source")
        check_enum(mode, copilot_pb2.SendMode, "mode")
        check_message_id(message_id)
        record = await self._reads(self._record_of, session_id)
        state = self._state_of(record)
        if self._host.store.shared:  # other daemons' commits first: checks see the session as it is
            self._delivery.catch_up(session_id, state, record.metadata.last_sequence)
        # Refuse a message no provider could answer before anything is written;
        # the route is taken again from the record when the turn begins.
        self._host.providers.route_for(record.metadata)
        user = ev.make_event(ev.USER_MESSAGE, content=prompt, source=source)
        if message_id:
            user.id = message_id
        return state, user, record
