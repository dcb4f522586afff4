"""Calls for a turn that runs on another daemon sharing the store, and serving them.

``AbortTurn``, ``SendMessage(mode=immediate)`` (its abort of the running
turn), ``HandlePendingToolCall``, ``HandlePendingPermission`` and
``ResumeSession(continue_pending_work=false)`` (closing the turn's open
calls) act on a
running turn, which only the daemon holding the session's lease can touch.
Sent to another daemon, the call is posted in the store
(``copilotd.store.relay``) and waited for: the holder serves it as a call
of its own client and the caller gets the holder's answer (or error).

The poster waits at most ``timeout`` seconds, woken by the answer's
notification and re-checking every ``check_interval`` (a notification may
be lost). When the turn ends with the request unclaimed (it ended by
itself, or the holder died and another daemon closed it), the poster
withdraws the request and serves it here, where it now gets the answer any
daemon would give; when the time runs out unclaimed, it withdraws the
request and raises ``TurnHolderUnreachableError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

from copilot_client.proto.v1 import events_pb2
from copilotd.errors import (
    RelayedError,
    ServiceError,
    SessionNotFoundError,
    TurnHolderUnreachableError,
)
from copilotd.sessions.state import SessionState
from copilotd.sessions.turns import TurnEngine
from copilotd.store import SessionRecord, Store, StoreChange
from copilotd.store.relay import Relay, RequestAnswer, TurnRequest

log = logging.getLogger(__name__)

# A relayed call waits this many leases at most: long enough for a dead
# holder's lease to expire and another daemon to take the turn over.
TIMEOUT_LEASES = 3.0
MIN_TIMEOUT_SECONDS = 30.0


class TurnRelay:
    """Posts calls for turns running elsewhere, and serves those for turns running here.

    Args:
        store: a shared store (its ``relay`` is set).
        states: the sessions this daemon keeps in memory (the service's).
        state_of: a session's state, loaded if need be (``SessionNotFoundError``).
        turns: the turn engine, which serves the calls here.
    """

    def __init__(
        self,
        store: Store,
        states: dict[str, SessionState],
        state_of: Callable[[str], SessionState],
        turns: TurnEngine,
    ) -> None:
        assert store.relay is not None, "only a shared store relays calls"
        self._store = store
        self._relay: Relay = store.relay
        self._states = states
        self._state_of = state_of
        self._turns = turns
        self.check_interval = store.lease_seconds / 3
        self.timeout = max(MIN_TIMEOUT_SECONDS, TIMEOUT_LEASES * store.lease_seconds)
        self._wakers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._in_hand: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._looking = False
        self._look_again = False

    def runs_here(self, session_id: str, turn_id: str) -> bool:
        """Whether this daemon runs turn ``turn_id`` of the session."""
        state = self._states.get(session_id)
        return state is not None and state.turn is not None and state.turn.turn_id == turn_id

    @staticmethod
    def elsewhere(record: SessionRecord, state: SessionState) -> bool:
        """Whether the session's open turn may run on another daemon (calls are relayed)."""
        return state.turn is None and bool(record.open_turn_id)

    async def abort(self, record: SessionRecord, reason: str) -> bool:
        """Abort the session's open turn on the daemon running it (False: there is none)."""
        session_id, turn_id = record.metadata.session_id, record.open_turn_id
        if not turn_id or self.runs_here(session_id, turn_id):
            return False
        return await self.ask(record, TurnRequest(session_id, turn_id, "abort", reason=reason))

    async def tool_result(
        self, record: SessionRecord, call_id: str, result: events_pb2.ToolResult
    ) -> bool:
        """``HandlePendingToolCall`` served by the daemon running the turn."""
        request = TurnRequest(
            record.metadata.session_id,
            record.open_turn_id,
            "tool_result",
            subject=call_id,
            result=result.SerializeToString(),
        )
        return await self.ask(record, request)

    async def permission(
        self, record: SessionRecord, request_id: str, approved: bool, reason: str
    ) -> bool:
        """``HandlePendingPermission`` served by the daemon running the turn."""
        request = TurnRequest(
            record.metadata.session_id,
            record.open_turn_id,
            "permission",
            subject=request_id,
            approved=approved,
            reason=reason,
        )
        return await self.ask(record, request)

    async def close_calls(self, record: SessionRecord) -> bool:
        """A resume's ``continue_pending_work=false`` served by the daemon running the turn."""
        request = TurnRequest(record.metadata.session_id, record.open_turn_id, "close_calls")
        return await self.ask(record, request)

    async def _serve(self, request: TurnRequest) -> bool:
        """The call as this daemon serves it for its own clients."""
        session_id = request.session_id
        if request.kind == "abort":
            state = self._states.get(session_id)
            turn = None if state is None else state.turn
            if turn is None or turn.turn_id != request.turn_id:
                return False  # that turn is over: nothing to abort, as on any daemon
            await self._turns.cancel(turn, reason=request.reason)
            return True
        state = self._state_of(session_id)
        if request.kind == "close_calls":
            return await self._turns.calls.close_not_continued(state)
        if request.kind == "tool_result":
            result = events_pb2.ToolResult.FromString(request.result)
            return await self._turns.calls.answer(state, session_id, request.subject, result)
        return await self._turns.calls.decide(
            state, session_id, request.subject, approved=request.approved, reason=request.reason
        )

    async def ask(self, record: SessionRecord, request: TurnRequest) -> bool:
        """Have the daemon running the session's open turn serve ``request``; its answer."""
        session_id = record.metadata.session_id
        posted = await asyncio.to_thread(self._relay.post, request)
        waker = asyncio.Event()
        self._wakers[session_id].add(waker)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        # A claimed request is answered by its claimer, unless that daemon dies.
        last_chance = deadline + self.timeout
        try:
            while True:
                waker.clear()
                answer = await asyncio.to_thread(self._relay.answer_of, posted)
                if answer is not None:
                    return _returned(answer)
                current = await asyncio.to_thread(self._store.get_session, session_id)
                turn_over = current is None or current.open_turn_id != request.turn_id
                if turn_over and await asyncio.to_thread(self._relay.withdraw, posted):
                    if current is None:
                        raise SessionNotFoundError(session_id)
                    return await self._serve(request)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    if await asyncio.to_thread(self._relay.withdraw, posted):
                        raise TurnHolderUnreachableError(session_id, request.turn_id, self.timeout)
                    if loop.time() >= last_chance:
                        raise TurnHolderUnreachableError(
                            session_id, request.turn_id, last_chance - deadline, taken_up=True
                        )
                    deadline = min(loop.time() + self.check_interval, last_chance)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waker.wait(), min(remaining, self.check_interval))
        finally:
            self._wakers[session_id].discard(waker)
            if not self._wakers[session_id]:
                del self._wakers[session_id]
            await asyncio.to_thread(self._relay.forget, posted)

    def heard(self, change: StoreChange | None) -> bool:
        """Act on a change another daemon reported; True when it was for the relay alone
        (a request to serve here, or the answer to one posted here)."""
        if change is not None and change.kind == "request":
            self.look_soon()
            return True
        self.wake(None if change is None else change.session_id)
        return change is not None and change.kind == "answer"

    def wake(self, session_id: str | None) -> None:
        """Something changed for ``session_id`` (None: for any): its posters look again."""
        wakers = (
            [w for group in self._wakers.values() for w in group]
            if session_id is None
            else self._wakers.get(session_id, ())
        )
        for waker in wakers:
            waker.set()

    async def serve_waiting(self) -> None:
        """Serve the requests posted for the turns this daemon runs (on a notification,
        and on every lease renewal in case one was missed)."""
        if self._looking:
            self._look_again = True
            return
        self._looking = True
        try:
            self._look_again = True
            while self._look_again:
                self._look_again = False
                for request in await asyncio.to_thread(self._relay.waiting):
                    await self._take(request)
        finally:
            self._looking = False

    def look_soon(self) -> None:
        """``serve_waiting`` in a task of its own (from a notification's callback)."""
        self._spawn(self.serve_waiting())

    async def _take(self, request: TurnRequest) -> None:
        if request.request_id in self._in_hand:
            return
        if not self.runs_here(request.session_id, request.turn_id):
            record = await asyncio.to_thread(self._store.get_session, request.session_id)
            if record is not None and record.open_turn_id == request.turn_id:
                return  # open here but not running yet (a restart): served once it runs
        if not await asyncio.to_thread(self._relay.claim, request.request_id):
            return
        self._in_hand.add(request.request_id)
        self._spawn(self._answer(request))

    async def _answer(self, request: TurnRequest) -> None:
        try:
            try:
                answer = RequestAnswer(value=await self._serve(request))
            except ServiceError as error:
                answer = RequestAnswer(
                    status=error.status,
                    reason=error.reason,
                    message=error.message,
                    metadata=dict(error.metadata),
                )
            await asyncio.to_thread(self._relay.answer, request, answer)
            self.wake(request.session_id)  # the poster may be this daemon
        except Exception:
            log.exception("relayed %s for session %s failed", request.kind, request.session_id)
        finally:
            self._in_hand.discard(request.request_id)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(_run(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _run(work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:  # the next notification or lease renewal tries again
        log.exception("serving relayed calls failed")


def _returned(answer: RequestAnswer) -> bool:
    """The answer as the call returns it here: its value, or its error raised."""
    if not answer.status:
        return answer.value
    error = RelayedError(answer.status, answer.reason, answer.message)  # type: ignore[arg-type]
    error.metadata.update(answer.metadata)
    raise error
