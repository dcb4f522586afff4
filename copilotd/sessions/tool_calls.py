"""The client-side tool calls of running turns: answered, closed, waited for.

A turn that asked for tools waits (``settle``) until each call has exactly
one ``tool.execution_complete``: the first client result (``answer``), or a
synthetic one when nobody will answer (``close_calls``: the pending timeout,
a resume without pending work; ``close_open_calls``: an abort, a failure,
a shutdown). Which attached client is asked to answer is ``routes``'
(``tool_routing``); which turn a call belongs to and when a turn runs are
the turn engine's; this module only settles the calls.
"""

from __future__ import annotations

import asyncio
import contextlib

from copilot_client.proto.v1 import copilot_pb2
from copilotd.errors import (
    AwaitingPermissionError,
    PermissionAnsweredError,
    ToolCallAnsweredError,
    UnknownPermissionRequestError,
    UnknownToolCallError,
)
from copilotd.events import SessionEvent
from copilotd.providers import ToolCall
from copilotd.sessions.state import RunningTurn, SessionState, TurnHost
from copilotd.sessions.tool_routing import ToolRoutes
from copilotd.sessions.tools import (
    ToolResult,
    complete_event,
    denied_result,
    external_request_event,
    interrupted_result,
    permission_completed_event,
)

NOT_CONTINUED = "the session was resumed without its pending work"


def close_open_calls(turn: RunningTurn, why: str) -> list[SessionEvent]:
    """Synthetic results for the calls still open, to commit with the turn's end:
    a history is never left with a call and no result."""
    calls = list(turn.open_calls.values())
    turn.open_calls.clear()
    return _closing_events(turn, calls, interrupted_result(why))


def _closing_events(
    turn: RunningTurn, calls: list[ToolCall], result: ToolResult
) -> list[SessionEvent]:
    """``result`` for each of ``calls``, an open permission request denied first
    with the same words (a request never stays open once its call is closed)."""
    events = []
    for call in calls:
        if call.call_id in turn.awaiting_permission:
            turn.awaiting_permission.discard(call.call_id)
            events.append(
                permission_completed_event(
                    call.call_id,
                    turn.turn_id,
                    approved=False,
                    reason=result.text_result_for_llm,
                )
            )
        events.append(complete_event(call, turn.turn_id, result))
    return events


def reopen_calls(turn: RunningTurn, pending: list[copilot_pb2.PendingToolCall]) -> None:
    """Make the calls a restart found recorded answerable again in ``turn``."""
    for call in pending:
        turn.open_calls[call.tool_call_id] = ToolCall(
            call.tool_call_id, call.tool_name, call.arguments_json
        )
        if call.awaiting_permission:
            turn.awaiting_permission.add(call.tool_call_id)


class ToolCalls:
    """Records each open call's one result for the turn engine's host."""

    def __init__(self, host: TurnHost) -> None:
        self._host = host
        self.routes = ToolRoutes()

    async def answer(
        self, state: SessionState, session_id: str, call_id: str, result: ToolResult
    ) -> bool:
        """Record the first result for an open call; False for the same one sent again.

        The call leaves ``open_calls`` before any await, so of two clients
        answering at once only the first commits; the other is told whether
        its result is the one recorded (a retry) or a different one.
        """
        turn = state.turn
        if turn is not None and call_id in turn.awaiting_permission:
            raise AwaitingPermissionError(session_id, call_id)
        call = turn.open_calls.pop(call_id, None) if turn is not None else None
        if turn is not None and call is not None and not turn.closing:
            await self._commit_results(turn, [call], result)
            return True
        if turn is not None and call is not None:  # ending: its end closes the call
            turn.open_calls[call_id] = call
        recorded = state.tool_results.get(call_id)
        if recorded is None and turn is not None:
            recorded = turn.answering.get(call_id)
        if recorded is None:
            raise UnknownToolCallError(session_id, call_id)
        if recorded != result:
            raise ToolCallAnsweredError(session_id, call_id)
        return False

    async def decide(
        self,
        state: SessionState,
        session_id: str,
        request_id: str,
        *,
        approved: bool,
        reason: str,
    ) -> bool:
        """Record the first decision on an open permission request; False for the
        same decision sent again.

        Approved, the call goes on to ``external_tool.requested`` (in the same
        commit); denied, it gets its ``denied`` result at once. The request
        leaves ``awaiting_permission`` before any await, so of two clients
        deciding at once only the first commits.
        """
        turn = state.turn
        if turn is not None and request_id in turn.awaiting_permission and not turn.closing:
            turn.awaiting_permission.discard(request_id)
            decision = permission_completed_event(
                request_id, turn.turn_id, approved=approved, reason=reason
            )
            if not approved:
                call = turn.open_calls.pop(request_id)
                try:
                    await self._commit_results(turn, [call], denied_result(reason), [decision])
                except BaseException:
                    turn.awaiting_permission.add(request_id)
                    raise
                return True
            call = turn.open_calls[request_id]
            try:
                await self._host.append(
                    turn.session_id,
                    [decision, external_request_event(call, turn.turn_id)],
                    fence=turn.turn_id,
                )
            except BaseException:
                turn.awaiting_permission.add(request_id)
                raise
            self.routes.route(turn)  # now to a client running the tool
            return True
        recorded = state.permission_decisions.get(request_id)
        if recorded is None:
            raise UnknownPermissionRequestError(session_id, request_id)
        if recorded != approved:
            raise PermissionAnsweredError(session_id, request_id)
        return False

    async def close_not_continued(self, state: SessionState) -> bool:
        """Close the open calls of a session resumed with ``continue_pending_work=False``;
        True when some were (the turn then goes on to its next round)."""
        turn = state.turn
        if turn is None or turn.closing:
            return False
        return await self.close_calls(turn, interrupted_result(NOT_CONTINUED)) > 0

    async def close_calls(self, turn: RunningTurn, result: ToolResult) -> int:
        """Give every open call of ``turn`` ``result`` (a synthetic one); returns how many."""
        calls = list(turn.open_calls.values())
        turn.open_calls.clear()
        if calls:
            await self._commit_results(turn, calls, result)
        return len(calls)

    async def _commit_results(
        self,
        turn: RunningTurn,
        calls: list[ToolCall],
        result: ToolResult,
        before: list[SessionEvent] | None = None,
    ) -> None:
        for call in calls:
            turn.answering[call.call_id] = result
        awaiting = turn.awaiting_permission & {call.call_id for call in calls}
        closing = [*(before or []), *_closing_events(turn, calls, result)]
        try:
            await self._host.append(turn.session_id, closing, fence=turn.turn_id)
        except BaseException:
            # Not recorded: the calls are open again for another answer.
            turn.open_calls.update((call.call_id, call) for call in calls)
            turn.awaiting_permission |= awaiting
            raise
        else:
            turn.results.update((call.call_id, result) for call in calls)
        finally:
            for call in calls:
                turn.answering.pop(call.call_id, None)
            turn.calls_changed.set()

    async def settle(self, turn: RunningTurn) -> None:
        """Wait until every call of the last round has its result (or timed out)."""
        timeout = self._host.tool_call_timeout
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while turn.open_calls or turn.answering:
            turn.calls_changed.clear()
            if deadline is None:
                await turn.calls_changed.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 and turn.open_calls:
                why = f"no result within the daemon's tool call timeout of {timeout:g} s"
                await self.close_calls(turn, interrupted_result(why, "timeout"))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(turn.calls_changed.wait(), max(remaining, 0.01))
