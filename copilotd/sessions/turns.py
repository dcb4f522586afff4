"""The turn engine: one user message in, one answer (or a clear end) out.

A turn persists the user message (and its turn_start) before the model is
called, streams the model's deltas live, and always ends with a persisted
``assistant.turn_end``: completed, aborted, failed or interrupted. Text that
was streamed before an abort or a failure is kept as a partial
``assistant.message``. The history sent is trimmed to the model's context
budget (recorded as ``session.truncation``), and the tokens a completed turn
used are recorded as ``assistant.usage``. A session with infinite sessions
on is compacted around its turns (``compaction``): a model call at the
exhaustion threshold waits for a compaction, a turn that ends at the
background threshold starts one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import TYPE_CHECKING

from copilot_client.proto.v1 import copilot_pb2
from copilotd import events as ev
from copilotd.errors import (
    ServiceError,
    SessionNotFoundError,
    ShuttingDownError,
    StoreFullError,
)
from copilotd.events import SessionEvent
from copilotd.providers import (
    ChatMessage,
    ChatRequest,
    ProviderError,
    ToolCall,
    Usage,
    with_summary,
)
from copilotd.redaction import REDACTOR
from copilotd.sessions.compaction import Compactor
from copilotd.sessions.context_window import ContextWindow
from copilotd.sessions.state import RunningTurn, SessionState, TurnHost
from copilotd.sessions.token_budget import (
    FittedRequest,
    Truncation,
    estimate_tokens,
    fit_to_budget,
    message_tokens,
)
from copilotd.sessions.tool_calls import ToolCalls, close_open_calls, reopen_calls
from copilotd.sessions.tool_routing import offer
from copilotd.sessions.tools import requested_events

if TYPE_CHECKING:
    from copilotd.store import QueueEdit, SessionRecord

log = logging.getLogger(__name__)

BUILTIN_SYSTEM_MESSAGE = (
    "You are a helpful assistant in a conversation that copilotd keeps across restarts."
)
INTERRUPTED_AT_SHUTDOWN = "interrupted by daemon shutdown"
# A provider's error text kept in session.error (its body can be a whole page).
MAX_ERROR_MESSAGE_CHARS = 4096
# Backoff of a turn's end waiting for room in a full store.
CLOSE_RETRY_FIRST_DELAY = 0.1
CLOSE_RETRY_MAX_DELAY = 2.0


class AnswerTooLargeError(Exception):
    """The model's answer outgrew what the daemon can store and send back."""


class ToolRoundsExceededError(Exception):
    """The model kept calling tools past the daemon's limit of rounds per turn."""


Mode = copilot_pb2.SystemMessageMode


def system_prompt(message: copilot_pb2.SystemMessage) -> str:
    if not message.content:
        return BUILTIN_SYSTEM_MESSAGE
    if message.mode == Mode.SYSTEM_MESSAGE_MODE_REPLACE:
        return message.content
    return f"{BUILTIN_SYSTEM_MESSAGE}\n\n{message.content}"


class TurnEngine:
    """Starts, runs, cancels and ends turns for its host (see ``TurnHost``)."""

    def __init__(self, host: TurnHost) -> None:
        self._host = host
        self.calls = ToolCalls(host)
        self.compactor = Compactor(host)

    def claim(self, state: SessionState, session_id: str, user_message_id: str) -> RunningTurn:
        """Reserve the session for the turn answering ``user_message_id`` (before any await)."""
        turn = RunningTurn(
            session_id=session_id, turn_id=ev.new_id(), user_message_id=user_message_id
        )
        state.turn = turn
        return turn

    async def begin(
        self,
        turn: RunningTurn,
        user: SessionEvent,
        *,
        expected_last_sequence: int | None = None,
        queue: QueueEdit | None = None,
        record: SessionRecord | None = None,
    ) -> SessionEvent:
        """Commit the user message with its turn_start, then run the turn in a task.

        Returns the stored user.message. If the commit fails the session is
        released and the error raised; nothing of the turn was written.
        """
        host = self._host
        try:
            if record is None:  # not read by the caller (no await since, so still current)
                record = host.store.get_session(turn.session_id)
            if record is None:
                raise SessionNotFoundError(turn.session_id)
            self._prepare(turn, record)
            turn_start = ev.make_event(
                ev.ASSISTANT_TURN_START, turn_id=turn.turn_id, user_message_id=user.id
            )
            _, stored = await host.append(
                turn.session_id,
                [user, turn_start],
                open_turn=(turn.turn_id, user.id),
                expected_last_sequence=expected_last_sequence,
                queue=queue,
            )
        except BaseException:
            turn.started.set()
            host.release_turn(turn, turn_started=False)
            raise
        turn.task = asyncio.get_running_loop().create_task(
            self._run(turn), name=f"turn {turn.session_id}/{turn.turn_id}"
        )
        turn.started.set()
        return stored[0]

    async def cancel(self, turn: RunningTurn, *, reason: str, interrupted: bool = False) -> None:
        """Stop ``turn`` and wait until its end marker is committed.

        A turn already ending is left to end (it may be waiting for room in
        the store, which an abort cannot make), except at shutdown.
        """
        await turn.started.wait()
        if turn.task is None or turn.task.done():
            return
        if turn.closing and not interrupted:
            return
        await turn.running.wait()
        turn.cancel_reason = reason
        turn.interrupted = interrupted
        turn.task.cancel()
        await asyncio.wait({turn.task})

    def wait_again(self, state: SessionState, record: SessionRecord) -> bool:
        """Run again the turn the last daemon left waiting for tool results.

        Its calls stay answerable; once they are, the turn goes on as if the
        daemon had never stopped. False when it cannot run (its own
        provider's secret is gone): the caller then closes it as interrupted.
        """
        session_id = record.metadata.session_id
        turn = self.claim(state, session_id, record.open_turn_user_message_id)
        turn.turn_id = record.open_turn_id
        try:
            self._prepare(turn, record)
        except ServiceError as error:
            state.turn = None
            log.warning("session %s: its waiting turn cannot go on: %s", session_id, error)
            return False
        reopen_calls(turn, list(record.metadata.pending_tool_calls))
        self.calls.routes.route(turn)
        turn.task = asyncio.get_running_loop().create_task(
            self._run(turn), name=f"turn {turn.session_id}/{turn.turn_id}"
        )
        turn.started.set()
        log.info(
            "session %s: turn %s waits again for %d tool call(s)",
            session_id,
            turn.turn_id,
            len(turn.open_calls),
        )
        return True

    def _prepare(self, turn: RunningTurn, record: SessionRecord) -> None:
        turn.model = record.metadata.model
        turn.system_message.CopyFrom(record.metadata.system_message)
        turn.route = self._host.providers.route_for(record.metadata)
        turn.infinite_sessions.CopyFrom(record.metadata.infinite_sessions)
        turn.declared = list(record.metadata.tools)
        offer(turn, self.calls.routes.clients(turn.session_id))

    async def _record_calls(
        self,
        turn: RunningTurn,
        message_id: str,
        calls: list[ToolCall],
        usage: SessionEvent | None,
    ) -> None:
        """Commit the assistant message asking for ``calls`` with their starts."""
        message = self._assistant_message(turn, message_id, partial=False)
        for call in calls:
            message.assistant_message.tool_requests.add(
                tool_call_id=call.call_id, name=call.name, arguments_json=call.arguments_json
            )
        events = [message, *requested_events(calls, turn.turn_id, turn.skip_permission)]
        if usage is not None:
            events.append(usage)
        turn.open_calls.update((call.call_id, call) for call in calls)
        turn.awaiting_permission.update(
            call.call_id for call in calls if call.name not in turn.skip_permission
        )
        commit = asyncio.ensure_future(
            self._host.append(turn.session_id, events, fence=turn.turn_id)
        )
        try:
            # Shielded: an abort arriving mid-commit must know whether the
            # starts were stored, to close exactly the calls that were.
            await asyncio.shield(commit)
            self.calls.routes.route(turn)
        except BaseException:
            await asyncio.wait({commit})
            if commit.cancelled() or commit.exception() is not None:
                for call in calls:
                    turn.open_calls.pop(call.call_id, None)
                    turn.awaiting_permission.discard(call.call_id)
            raise
        finally:
            turn.text.clear()
            turn.chars = 0

    async def _model_round(
        self, turn: RunningTurn, message_id: str
    ) -> tuple[Usage | None, FittedRequest, list[ToolCall]]:
        """One model call: its text streamed into ``turn.text``, its tool calls returned."""
        host = self._host
        route = turn.route
        assert route is not None, "begin() sets the route before the turn runs"
        context = host.load_context(turn.session_id)
        system = self._system(turn, context)
        if await self.compactor.before_model_call(
            turn, route, message_tokens(system) + context.tokens
        ):
            # The compaction's commit has updated the cached context.
            context = host.load_context(turn.session_id)
            system = self._system(turn, context)
        fitted = fit_to_budget(
            system, context.messages, route.prompt_budget, history_tokens=context.tokens
        )
        if fitted.truncation is not None:
            await host.append(
                turn.session_id, [self._truncation(turn, fitted.truncation)], fence=turn.turn_id
            )
        await self.calls.routes.refresh(turn.session_id)  # on other daemons too
        offer(turn, self.calls.routes.clients(turn.session_id))  # who is attached now
        request = ChatRequest(
            model=route.wire_model,
            messages=fitted.messages,
            max_output_tokens=route.max_output_tokens,
            tools=turn.tools,
        )
        usage: Usage | None = None
        calls: list[ToolCall] = []
        async for chunk in route.provider.stream(request):
            if isinstance(chunk, Usage):
                usage = chunk
            elif isinstance(chunk, ToolCall):
                calls.append(chunk)
            elif chunk.text:
                turn.text.append(chunk.text)
                turn.chars += len(chunk.text)
                if turn.chars * 4 > host.max_prompt_bytes:
                    self._check_answer_size(turn, host.max_prompt_bytes)
                if not host.has_audience(turn.session_id):
                    continue  # deltas are live-only: nobody to build them for
                host.publish_ephemeral(
                    turn.session_id,
                    ev.make_event(
                        ev.ASSISTANT_MESSAGE_DELTA,
                        message_id=message_id,
                        delta_content=chunk.text,
                        turn_id=turn.turn_id,
                        user_message_id=turn.user_message_id,
                    ),
                )
        return usage, fitted, calls

    @staticmethod
    def _system(turn: RunningTurn, context: ContextWindow) -> ChatMessage:
        """The system message, carrying the latest compaction's summary."""
        return ChatMessage(
            "system", with_summary(system_prompt(turn.system_message), context.summary)
        )

    async def _run(self, turn: RunningTurn) -> None:
        turn.running.set()
        host = self._host
        message_id = ev.new_id()
        route = turn.route
        assert route is not None, "begin() sets the route before the turn runs"
        started = time.monotonic()
        context_tokens = 0  # known once the turn completes
        try:
            rounds = 0
            asked = list(turn.open_calls.values())  # a turn waiting again after a restart
            while True:
                # A turn resumed after a restart starts here, waiting for its calls.
                await self.calls.settle(turn)
                final = self._terminal_result(turn, asked)
                if final is not None:
                    turn.text[:] = [final]  # the turn's answer: no model call after it
                    usage_event = None
                    break
                rounds += 1
                usage, fitted, calls = await self._model_round(turn, message_id)
                usage_event = None
                if usage is not None or route.provider.counts_tokens:
                    usage_event = self._usage(turn, usage, fitted, time.monotonic() - started)
                if not calls:
                    break
                if rounds >= host.max_tool_rounds:
                    raise ToolRoundsExceededError(
                        f"the model asked for tools again after {rounds} rounds, the daemon's "
                        "limit of model calls per turn; these calls were not made. Send "
                        "another message to go on, or raise [tools] max_rounds"
                    )
                await self._record_calls(turn, message_id, calls, usage_event)
                asked = calls
                message_id = ev.new_id()
                started = time.monotonic()
            events = [self._assistant_message(turn, message_id, partial=False)]
            if usage_event is not None:
                events.append(usage_event)
            events.append(self._turn_end(turn, ev.TurnEndReason.TURN_END_REASON_COMPLETED, ""))
            # What the next turn's context will hold: this request and its answer.
            sent = fitted.truncation.pre_tokens if fitted.truncation else fitted.tokens
            context_tokens = sent + estimate_tokens("".join(turn.text))
        except asyncio.CancelledError:
            if turn.interrupted and turn.open_calls and not turn.answering:
                # Shutdown while waiting for clients: the turn stays open in the
                # store with its calls, and the next daemon waits for them again.
                turn.closing = True
                self._host.release_turn(turn, turn_started=True, error=ShuttingDownError())
                return
            events = self._cancelled_events(turn, message_id)
        except ToolRoundsExceededError as error:
            events = self._failed_events(turn, message_id, "tool_rounds_exceeded", str(error))
        except AnswerTooLargeError as error:
            log.warning("turn %s of session %s: %s", turn.turn_id, turn.session_id, error)
            events = self._failed_events(turn, message_id, "answer_too_large", str(error))
        except ProviderError as error:
            # The provider's words may quote a key; nothing secret is stored.
            message = REDACTOR.redact(error.message)
            if len(message) > MAX_ERROR_MESSAGE_CHARS:
                message = message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
            if error.attempts > 1:
                message += f" (gave up after {error.attempts} attempts)"
            log.warning("turn %s of session %s failed: %s", turn.turn_id, turn.session_id, message)
            events = self._failed_events(
                turn,
                message_id,
                error.error_type,
                message,
                status_code=error.status_code,
                attempts=error.attempts,
            )
        except Exception:
            log.exception("turn %s of session %s failed", turn.turn_id, turn.session_id)
            events = self._failed_events(
                turn, message_id, "internal", "internal error in copilotd; see the daemon log"
            )
        await self._finish(turn, events)
        if context_tokens and not host.shutting_down:
            self.compactor.after_turn(turn, route, context_tokens)

    @staticmethod
    def _terminal_result(turn: RunningTurn, asked: list[ToolCall]) -> str | None:
        """The result of the first call of a terminal tool (``is_terminal``) in the
        round just settled, which ends the turn; None when the model goes on."""
        for call in asked:
            result = turn.results.get(call.call_id)
            if call.name in turn.terminal and result is not None:
                return result.text_result_for_llm
        return None

    @staticmethod
    def _check_answer_size(turn: RunningTurn, limit: int) -> None:
        """Stop a turn whose answer passes ``limit`` bytes, keeping what fits as partial.

        The limit is the prompt limit: an answer must fit in one event that
        every reader (SendMessageAndWait, a page of ListEvents) can carry.
        """
        text = "".join(turn.text).encode()
        if len(text) <= limit:
            return
        kept = text[:limit].decode(errors="ignore")
        turn.text[:] = [kept]
        turn.chars = len(kept)
        raise AnswerTooLargeError(
            f"the model's answer passed {limit} bytes (the daemon's --max-prompt-bytes), so "
            f"the turn was stopped; its first {len(kept.encode())} bytes are kept as a partial "
            "answer. Ask for a shorter answer, or start copilotd with a larger --max-prompt-bytes"
        )

    @staticmethod
    def _truncation(turn: RunningTurn, truncation: Truncation) -> SessionEvent:
        return ev.make_event(
            ev.SESSION_TRUNCATION,
            turn_id=turn.turn_id,
            token_limit=truncation.token_limit,
            pre_truncation_tokens=truncation.pre_tokens,
            pre_truncation_messages=truncation.pre_messages,
            post_truncation_tokens=truncation.post_tokens,
            post_truncation_messages=truncation.post_messages,
            tokens_removed=truncation.tokens_removed,
            messages_removed=truncation.messages_removed,
            first_kept_sequence=truncation.first_kept_sequence,
            model=turn.model,
        )

    @staticmethod
    def _usage(
        turn: RunningTurn, usage: Usage | None, fitted: FittedRequest, seconds: float
    ) -> SessionEvent:
        """The turn's assistant.usage: as reported; a count the provider did not send is
        estimated like the context budget, and the usage then says it is estimated."""
        if usage is None:
            usage = Usage(input_tokens=None, output_tokens=None)
        input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
        estimated = input_tokens is None or output_tokens is None
        if input_tokens is None:
            input_tokens = fitted.tokens
        if output_tokens is None:
            output_tokens = estimate_tokens("".join(turn.text))
        return ev.make_event(
            ev.ASSISTANT_USAGE,
            model=turn.model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            duration_ms=round(seconds * 1000),
            turn_id=turn.turn_id,
            user_message_id=turn.user_message_id,
            provider_call_id=usage.call_id,
            estimated=estimated,
        )

    async def _finish(self, turn: RunningTurn, events: list[SessionEvent]) -> None:
        turn.closing = True
        try:
            await self._close(turn, events)
        except ServiceError as error:
            # Deleted meanwhile, or no space: nothing else to record it in.
            log.warning(
                "turn %s of session %s: end not recorded: %s",
                turn.turn_id,
                turn.session_id,
                error.message,
            )
            self._host.release_turn(turn, turn_started=True, error=error)
        except BaseException as error:
            self._host.release_turn(turn, turn_started=True, error=error)
            raise

    async def _close(self, turn: RunningTurn, events: list[SessionEvent]) -> None:
        """Commit the turn's end, whatever it takes: every turn ends.

        An end that does not fit in a full store (a long answer) is replaced
        by a short one (a session.error saying so, then the turn_end), which
        the store's reserve admits under a size cap. On a disk with no room
        even for that, the session stays busy with this turn and the short
        end is tried again with backoff until space returns: releasing the
        session instead would let the next turn start while this one stays
        open in the log for good.
        """
        host = self._host
        try:
            await host.append(turn.session_id, events, close_turn=True, fence=turn.turn_id)
            return
        except StoreFullError as error:
            log.warning(
                "turn %s of session %s: its answer could not be stored (%s); ending it without",
                turn.turn_id,
                turn.session_id,
                error.message,
            )
            short = self._store_full_events(turn, error)
        delay = CLOSE_RETRY_FIRST_DELAY
        for attempt in itertools.count(1):
            try:
                await host.append(turn.session_id, short, close_turn=True, fence=turn.turn_id)
            except StoreFullError as error:
                if attempt == 1:
                    log.warning(
                        "turn %s of session %s cannot end: %s; the session stays busy and "
                        "its end is retried until there is room",
                        turn.turn_id,
                        turn.session_id,
                        error.message,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, CLOSE_RETRY_MAX_DELAY)
                continue
            if attempt > 1:
                log.info(
                    "turn %s of session %s ended after %d attempts (room again)",
                    turn.turn_id,
                    turn.session_id,
                    attempt,
                )
            return

    def _store_full_events(self, turn: RunningTurn, error: StoreFullError) -> list[SessionEvent]:
        message = (
            f"the turn's answer ({turn.chars} characters) could not be stored: "
            f"{error.message}; it is lost, the session goes on"
        )
        return self._failed_events(turn, "", "store_full", message, keep_text=False)

    def _assistant_message(
        self, turn: RunningTurn, message_id: str, *, partial: bool
    ) -> SessionEvent:
        return ev.make_event(
            ev.ASSISTANT_MESSAGE,
            message_id=message_id,
            content="".join(turn.text),
            turn_id=turn.turn_id,
            user_message_id=turn.user_message_id,
            partial=partial,
            model=turn.model,
        )

    def _turn_end(self, turn: RunningTurn, reason: int, message: str) -> SessionEvent:
        return ev.make_event(
            ev.ASSISTANT_TURN_END,
            turn_id=turn.turn_id,
            user_message_id=turn.user_message_id,
            reason=reason,
            message=message,
        )

    def _cancelled_events(self, turn: RunningTurn, message_id: str) -> list[SessionEvent]:
        events = []
        if not turn.interrupted:
            events.append(ev.make_event(ev.ABORT, reason=turn.cancel_reason, turn_id=turn.turn_id))
        why = INTERRUPTED_AT_SHUTDOWN if turn.interrupted else f"turn aborted: {turn.cancel_reason}"
        events.extend(close_open_calls(turn, why))
        if turn.text:
            events.append(self._assistant_message(turn, message_id, partial=True))
        if turn.interrupted:
            end = self._turn_end(
                turn, ev.TurnEndReason.TURN_END_REASON_INTERRUPTED, INTERRUPTED_AT_SHUTDOWN
            )
        else:
            end = self._turn_end(turn, ev.TurnEndReason.TURN_END_REASON_ABORTED, turn.cancel_reason)
        events.append(end)
        return events

    def _failed_events(
        self,
        turn: RunningTurn,
        message_id: str,
        error_type: str,
        message: str,
        *,
        status_code: int = 0,
        attempts: int = 0,
        keep_text: bool = True,
    ) -> list[SessionEvent]:
        events = close_open_calls(turn, f"the turn failed: {error_type}")
        if turn.text and keep_text:
            events.append(self._assistant_message(turn, message_id, partial=True))
        error = ev.make_event(
            ev.SESSION_ERROR,
            error_type=error_type,
            message=message,
            turn_id=turn.turn_id,
            user_message_id=turn.user_message_id,
        )
        if status_code:
            error.session_error.status_code = status_code
        if attempts:
            error.session_error.attempts = attempts
        events.append(error)
        events.append(self._turn_end(turn, ev.TurnEndReason.TURN_END_REASON_ERROR, message))
        return events
