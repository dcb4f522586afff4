"""Infinite sessions: the older part of a conversation summarised by its own model.

**When.** Utilization is the estimated size of what the model is sent (the
system message with the latest summary, and the messages after the range
that summary covers) over the model's prompt budget (``ModelRoute``; none
known: only manual compactions run). With ``InfiniteSessionConfig.enabled``:

- after a turn ends at or above ``background_compaction_threshold``, a
  compaction starts in the background; turns go on meanwhile;
- a model call at or above ``buffer_exhaustion_threshold`` waits for the
  running compaction (or starts one and waits); if it fails, the call goes
  on, trimmed to the budget as without compaction;
- ``CompactSession`` runs one now (or waits for the one under way).

**What.** The latest turns (``KEEP_RECENT_TURNS`` user messages and what
followed them) always reach the model verbatim. The messages before them,
with the previous summary, are summarised in chunks that each fit the
model's window (the summary so far, then the next chunk: a rolling summary),
so a compaction never fails because the context is full. The summary is
bounded (``summary_max_tokens``, and at most a quarter of the budget). The
range ends where no tool call waits for its result (``choose_cut``), so a
call and its result are summarised together or kept together.

**Events and order.** ``session.compaction_start`` is committed before the
model is asked, ``session.compaction_complete`` (with the summary, in one
commit) after. They are session events, like ``session.resume``: they
belong to no turn and may fall between a running turn's events. What a
reader may rely on: the range a complete covers ends before its start
event, and each model call builds its context when it is made, so a call
made after the complete sees the summary, one already made is unaffected.
A start with no successful complete (SIGKILL, shutdown, a failure) changes
nothing (``context_window``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from copilot_client.proto.v1 import events_pb2
from copilotd import events as ev
from copilotd.errors import (
    CompactionFailedError,
    InvalidArgumentError,
    NothingToCompactError,
    Reason,
    ServiceError,
    SessionNotFoundError,
    ShuttingDownError,
)
from copilotd.events import SessionEvent
from copilotd.providers import ChatMessage, ChatRequest, ModelRoute, ProviderError, TextDelta
from copilotd.redaction import REDACTOR
from copilotd.sessions.context_window import ContextWindow
from copilotd.sessions.state import RunningTurn, TurnHost
from copilotd.sessions.token_budget import BYTES_PER_TOKEN, estimate_tokens, message_tokens

log = logging.getLogger(__name__)

Trigger = events_pb2.CompactionTrigger
InfiniteSessionConfig = events_pb2.InfiniteSessionConfig

DEFAULT_BACKGROUND_THRESHOLD: Final = 0.80
DEFAULT_EXHAUSTION_THRESHOLD: Final = 0.95
DEFAULT_SUMMARY_MAX_TOKENS: Final = 2048
MAX_SUMMARY_MAX_TOKENS: Final = 65536
# The latest user messages (with the answers and tool rounds after them)
# that always go to the model verbatim.
KEEP_RECENT_TURNS: Final = 2
# Input of one summary call when the model's budget is not known.
DEFAULT_CHUNK_TOKENS: Final = 24_000
# Smallest input of one summary call, whatever the budget says.
MIN_CHUNK_TOKENS: Final = 256
# Room in a summary call for the framing around the summary and the chunk.
REQUEST_OVERHEAD_TOKENS: Final = 64
SUMMARIZER_INSTRUCTIONS: Final = (
    "You compact a long conversation between a user and an assistant. Merge the summary "
    "so far with the conversation that follows it into one updated summary that lets the "
    "assistant carry on: the user's goals and constraints, facts and decisions, what tools "
    "were called and what they returned, and open questions. Keep every line that starts "
    "with 'remember:' word for word. Answer with the summary only."
)


@dataclass(frozen=True, slots=True)
class CompactionSettings:
    """A session's ``InfiniteSessionConfig`` with the defaults filled in."""

    enabled: bool = False
    background_threshold: float = DEFAULT_BACKGROUND_THRESHOLD
    exhaustion_threshold: float = DEFAULT_EXHAUSTION_THRESHOLD
    summary_max_tokens: int = DEFAULT_SUMMARY_MAX_TOKENS

    @classmethod
    def of(cls, config: InfiniteSessionConfig) -> CompactionSettings:
        return cls(
            enabled=config.enabled,
            background_threshold=config.background_compaction_threshold
            or DEFAULT_BACKGROUND_THRESHOLD,
            exhaustion_threshold=config.buffer_exhaustion_threshold or DEFAULT_EXHAUSTION_THRESHOLD,
            summary_max_tokens=config.summary_max_tokens or DEFAULT_SUMMARY_MAX_TOKENS,
        )

    def summary_bound(self, route: ModelRoute) -> int:
        """The summary's largest size in tokens: a quarter of the budget at most."""
        if route.prompt_budget is None:
            return self.summary_max_tokens
        return max(1, min(self.summary_max_tokens, route.prompt_budget // 4))


def check_infinite_sessions(config: InfiniteSessionConfig, field: str) -> None:
    """Raise ``InvalidArgumentError`` (INVALID_INFINITE_SESSIONS) for settings that cannot work."""
    background = config.background_compaction_threshold
    exhaustion = config.buffer_exhaustion_threshold
    problem = ""
    if not (math.isfinite(background) and 0 <= background < 1):
        problem = (
            f"{field}.background_compaction_threshold is {background}; give a share of the "
            "context window above 0 and below 1 (e.g. 0.80), or 0 for the default 0.80"
        )
    elif not (math.isfinite(exhaustion) and 0 <= exhaustion <= 1):
        problem = (
            f"{field}.buffer_exhaustion_threshold is {exhaustion}; give a share of the context "
            "window above 0 and at most 1 (e.g. 0.95), or 0 for the default 0.95"
        )
    elif config.summary_max_tokens > MAX_SUMMARY_MAX_TOKENS:
        problem = (
            f"{field}.summary_max_tokens is {config.summary_max_tokens}, over the limit of "
            f"{MAX_SUMMARY_MAX_TOKENS}; a summary that large defeats compaction"
        )
    else:
        settings = CompactionSettings.of(config)
        if settings.exhaustion_threshold < settings.background_threshold:
            problem = (
                f"{field}.buffer_exhaustion_threshold ({settings.exhaustion_threshold}) is below "
                f"background_compaction_threshold ({settings.background_threshold}); a turn "
                "would wait for a compaction that should have started in the background"
            )
    if problem:
        raise InvalidArgumentError(problem, Reason.ERROR_REASON_INVALID_INFINITE_SESSIONS)


def choose_cut(messages: Sequence[ChatMessage], keep_turns: int = KEEP_RECENT_TURNS) -> int:
    """How many of the oldest ``messages`` to summarise (0: none).

    The rest starts at the ``keep_turns``-th user message from the end, or
    earlier: the cut moves back until no tool call before it waits for a
    result after it, so pairs stay whole on one side.
    """
    users = [index for index, message in enumerate(messages) if message.role == "user"]
    if len(users) <= keep_turns:
        return 0
    limit = users[-keep_turns]
    open_calls: set[str] = set()
    best = 0
    for index in range(limit + 1):
        message = messages[index]
        if index and not open_calls and message.role != "tool":
            best = index
        if message.role == "assistant":
            open_calls.update(call.call_id for call in message.tool_calls)
        elif message.role == "tool":
            open_calls.discard(message.tool_call_id)
    return best


def transcript(messages: Sequence[ChatMessage]) -> list[str]:
    """The messages as the summarising model reads them, one entry each."""
    entries = []
    for message in messages:
        if message.role == "tool":
            entries.append(f"tool result ({message.tool_call_id}): {message.content}")
            continue
        text = f"{message.role}: {message.content}" if message.content else ""
        calls = [
            f"{message.role} called {call.name} {call.arguments_json} ({call.call_id})"
            for call in message.tool_calls
        ]
        entries.append("\n".join(part for part in (text, *calls) if part))
    return entries


def chunked(entries: Sequence[str], chunk_tokens: int) -> list[list[str]]:
    """``entries`` in consecutive chunks of at most ``chunk_tokens`` (estimated) each;
    an entry larger than that alone is cut to fit."""
    limit = chunk_tokens * BYTES_PER_TOKEN
    chunks: list[list[str]] = []
    current: list[str] = []
    used = 0
    for entry in entries:
        if estimate_tokens(entry) > chunk_tokens:
            entry = entry.encode()[: limit - 16].decode(errors="ignore") + " [cut]"
        cost = estimate_tokens(entry) + 1
        if current and used + cost > chunk_tokens:
            chunks.append(current)
            current, used = [], 0
        current.append(entry)
        used += cost
    if current:
        chunks.append(current)
    return chunks


def bounded(summary: str, tokens: int) -> str:
    """``summary`` within ``tokens`` (estimated), cut at a line end where one is near."""
    limit = tokens * BYTES_PER_TOKEN
    data = summary.encode()
    if len(data) <= limit:
        return summary
    kept = data[:limit].decode(errors="ignore")
    line_end = kept.rfind("\n")
    return kept[:line_end] if line_end > limit // 2 else kept


class Compactor:
    """Runs each session's compactions, one at a time, for the turn engine and the service."""

    def __init__(self, host: TurnHost) -> None:
        self._host = host
        self._running: dict[str, asyncio.Task[SessionEvent]] = {}

    def start(
        self, session_id: str, trigger: Trigger.ValueType, custom_instructions: str = ""
    ) -> asyncio.Task[SessionEvent]:
        """The session's compaction under way, or a new one started now."""
        task = self._running.get(session_id)
        if task is not None:
            return task
        task = asyncio.get_running_loop().create_task(
            self._compact(session_id, trigger, custom_instructions),
            name=f"compaction {session_id}",
        )
        self._running[session_id] = task
        task.add_done_callback(lambda done: self._finished(session_id, done))
        return task

    def _finished(self, session_id: str, task: asyncio.Task[SessionEvent]) -> None:
        if self._running.get(session_id) is task:
            del self._running[session_id]
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, NothingToCompactError):
            # Usual when the latest turns alone fill the window; not worth a warning.
            log.info("session %s: compaction: %s", session_id, error.message)
        elif isinstance(error, ServiceError):
            log.warning("session %s: compaction: %s", session_id, error.message)
        elif error is not None:
            log.error("session %s: compaction failed", session_id, exc_info=error)

    async def compact_now(self, session_id: str, custom_instructions: str) -> SessionEvent:
        """A manual compaction's complete event (or that of the one under way)."""
        task = self.start(session_id, Trigger.COMPACTION_TRIGGER_MANUAL, custom_instructions)
        return await self._outcome(session_id, task)

    async def _outcome(self, session_id: str, task: asyncio.Task[SessionEvent]) -> SessionEvent:
        """``task``'s complete event. Shielded: a caller giving up does not stop the
        compaction; one stopped under the caller raises the service's error for why."""
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not task.cancelled() or (current is not None and current.cancelling()):
                raise  # the caller itself is being cancelled
            if self._host.shutting_down:
                raise ShuttingDownError() from None
            raise SessionNotFoundError(session_id) from None

    def forget(self, session_id: str) -> None:
        """Stop the compaction of a deleted session (its commit would fail anyway)."""
        task = self._running.get(session_id)
        if task is not None:
            task.cancel()

    def after_turn(self, turn: RunningTurn, route: ModelRoute, context_tokens: int) -> None:
        """Start a background compaction when a finished turn left the context at its threshold."""
        if not route.prompt_budget or turn.session_id in self._running:
            return
        settings = CompactionSettings.of(turn.infinite_sessions)
        threshold = settings.background_threshold * route.prompt_budget
        if settings.enabled and context_tokens >= threshold:
            self.start(turn.session_id, Trigger.COMPACTION_TRIGGER_THRESHOLD)

    async def before_model_call(
        self, turn: RunningTurn, route: ModelRoute, context_tokens: int
    ) -> bool:
        """Wait for a compaction when the context is at its exhaustion threshold;
        whether one completed (the caller then builds its context again)."""
        if not route.prompt_budget:
            return False
        settings = CompactionSettings.of(turn.infinite_sessions)
        if not settings.enabled or context_tokens < (
            settings.exhaustion_threshold * route.prompt_budget
        ):
            return False
        task = self.start(turn.session_id, Trigger.COMPACTION_TRIGGER_EXHAUSTION)
        try:
            await self._outcome(turn.session_id, task)
        except ServiceError:
            return False  # logged; the call goes on, trimmed to the budget
        return True

    async def close(self) -> None:
        """Stop the compactions under way (shutdown): each leaves a start with no complete."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _compact(
        self, session_id: str, trigger: Trigger.ValueType, custom_instructions: str
    ) -> SessionEvent:
        host = self._host
        record = host.store.get_session(session_id)
        if record is None:
            raise SessionNotFoundError(session_id)
        settings = CompactionSettings.of(record.metadata.infinite_sessions)
        route = host.providers.route_for(record.metadata)
        # Read from the store, not the turns' cached window: the compaction
        # runs beside turns, and an idle session's window may be dropped.
        context = ContextWindow.load(host.store, session_id)
        messages = list(context.messages)
        cut = choose_cut(messages)
        if cut == 0:
            raise NothingToCompactError(session_id, KEEP_RECENT_TURNS)
        before = context.summary_tokens + context.tokens
        figures = {
            "compaction_id": ev.new_id(),
            "trigger": trigger,
            "from_sequence": context.summary_covers + 1,
            "up_to_sequence": messages[cut].sequence - 1,
            "custom_instructions": custom_instructions,
        }
        start = ev.make_event(
            ev.SESSION_COMPACTION_START,
            current_tokens=before,
            token_limit=route.prompt_budget or 0,
            model=record.metadata.model,
            **figures,
        )
        await host.append(session_id, [start])
        bound = settings.summary_bound(route)
        try:
            summary, chunks = await self._summarize(
                route, context.summary, messages[:cut], bound, custom_instructions
            )
        except ProviderError as error:
            why = REDACTOR.redact(error.message)
            failed = ev.make_event(
                ev.SESSION_COMPACTION_COMPLETE,
                success=False,
                error=why,
                pre_compaction_tokens=before,
                **figures,
            )
            with contextlib.suppress(ServiceError):
                await host.append(session_id, [failed])
            raise CompactionFailedError(
                session_id, f"the model could not summarise: {why}"
            ) from None
        after = estimate_tokens(summary) + sum(map(message_tokens, messages[cut:]))
        complete = ev.make_event(
            ev.SESSION_COMPACTION_COMPLETE,
            success=True,
            pre_compaction_tokens=before,
            post_compaction_tokens=after,
            tokens_removed=max(0, before - after),
            messages_removed=cut,
            pre_compaction_messages_length=len(messages),
            summary_content=summary,
            chunks=chunks,
            **figures,
        )
        _, stored = await host.append(session_id, [complete])
        log.info(
            "session %s: compacted %d messages (%d -> %d tokens, %d model calls)",
            session_id,
            cut,
            before,
            after,
            chunks,
        )
        return stored[0]

    async def _summarize(
        self,
        route: ModelRoute,
        previous: str,
        messages: Sequence[ChatMessage],
        bound: int,
        custom_instructions: str,
    ) -> tuple[str, int]:
        """The rolling summary of ``previous`` and ``messages``, and the model calls it took."""
        instructions = SUMMARIZER_INSTRUCTIONS
        if custom_instructions:
            instructions += f"\n\nAlso: {custom_instructions}"
        budget = route.prompt_budget or DEFAULT_CHUNK_TOKENS
        chunk_tokens = max(
            MIN_CHUNK_TOKENS,
            budget - 2 * bound - estimate_tokens(instructions) - REQUEST_OVERHEAD_TOKENS,
        )
        summary = previous
        chunks = chunked(transcript(messages), chunk_tokens)
        for chunk in chunks:
            prompt = (
                f"Summary so far:\n{summary or '(none)'}\n\n"
                "Conversation to add to it:\n" + "\n".join(chunk)
            )
            request = ChatRequest(
                model=route.wire_model,
                messages=[ChatMessage("system", instructions), ChatMessage("user", prompt)],
                max_output_tokens=bound,
                task="summarize",
            )
            pieces = [
                piece.text
                async for piece in route.provider.stream(request)
                if isinstance(piece, TextDelta)
            ]
            text = "".join(pieces).strip()
            if not text:
                raise ProviderError("the model answered with an empty summary")
            summary = bounded(text, bound)
        return summary, len(chunks)
