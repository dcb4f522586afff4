"""What the session service and its turn engines share, and the contract between them.

The service (``service.py``) owns the sessions and their writes; the turn
engine (``turns.py``) runs one turn, and the scheduler (``scheduler.py``)
decides which message's turn runs next. The engines see the service only
through ``TurnHost`` below and never import it, so the dependency runs one
way: service -> scheduler -> turns -> state (an import-linter contract in
``pyproject.toml`` keeps it so).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from copilot_client.proto.v1 import copilot_pb2, events_pb2
from copilotd import events as ev
from copilotd.errors import SequenceConflictError
from copilotd.events import SessionEvent
from copilotd.providers import ModelRoute, ProviderRegistry, ToolCall, ToolSpec
from copilotd.sessions.context_window import ContextWindow
from copilotd.store import PendingMessage, QueueEdit, SessionRecord, Store

# User messages remembered per session (id -> sequence), so that a client
# sending a message again with its own id after losing the connection does
# not record it twice.
RECENT_MESSAGE_IDS = 256
# Tool results remembered per session (call id -> result), so that a client
# sending a result again after losing the connection is told it was recorded.
RECENT_TOOL_RESULTS = 256


@dataclass(frozen=True)
class TurnOutcome:
    """How a turn ended: what ``send_message_and_wait`` returns."""

    message_id: str
    answer: SessionEvent | None
    error: SessionEvent | None
    turn_end: SessionEvent

    @classmethod
    def from_closing_commit(cls, stored: Sequence[SessionEvent]) -> TurnOutcome:
        """From the events of the commit that closed the turn (turn_end last)."""
        turn_end = stored[-1]
        answer = error = None
        for event in stored:
            if event.type == ev.ASSISTANT_MESSAGE:
                answer = event
            elif event.type == ev.SESSION_ERROR:
                error = event
        return cls(turn_end.assistant_turn_end.user_message_id, answer, error, turn_end)


@dataclass
class RunningTurn:
    """The turn a session is running (or starting); only the turn engine changes it."""

    session_id: str
    turn_id: str
    user_message_id: str
    model: str = ""
    system_message: copilot_pb2.SystemMessage = field(default_factory=copilot_pb2.SystemMessage)
    route: ModelRoute | None = None
    text: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    # Set once the turn's task exists (or its start failed), so that an abort
    # arriving while the user message is still being committed can wait.
    started: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by the turn's task when it first runs: a task cancelled before that
    # would never reach the code that records the turn's end.
    running: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str = ""
    interrupted: bool = False
    # Set once the turn's end is being committed (an abort then has nothing to stop).
    closing: bool = False
    # Characters of ``text`` so far (cheap to keep; bytes are counted only
    # when the characters alone could be over the limit).
    chars: int = 0
    # The session's declared tools (as the turn began); each round offers the
    # model those answered by hand and those of the clients attached then.
    declared: list[events_pb2.ToolDefinition] = field(default_factory=list)
    # The tools the model may call in this round.
    tools: list[ToolSpec] = field(default_factory=list)
    # Tools of this round whose result ends the turn (declared is_terminal).
    terminal: frozenset[str] = frozenset()
    # The client each open call (with True: its permission request) was sent
    # to, by client id (``tool_routing``).
    assigned: dict[tuple[str, bool], str] = field(default_factory=dict)
    # Recorded tool calls waiting for a result, by call id.
    open_calls: dict[str, ToolCall] = field(default_factory=dict)
    # Results being committed, by call id: taken from ``open_calls`` with no
    # await in between, so that of two clients answering one call only the
    # first commits.
    answering: dict[str, events_pb2.ToolResult] = field(default_factory=dict)
    # The results recorded in this turn, by call id (a terminal tool's ends it).
    results: dict[str, events_pb2.ToolResult] = field(default_factory=dict)
    # Open calls (ids) waiting for a permission decision: answerable only
    # with HandlePendingPermission until approved.
    awaiting_permission: set[str] = field(default_factory=set)
    # Tools whose calls need no permission request (declared skip_permission).
    skip_permission: frozenset[str] = frozenset()
    # Set whenever a call is answered or closed, for the engine waiting on them.
    calls_changed: asyncio.Event = field(default_factory=asyncio.Event)
    # The session's compaction settings when the turn began (unset: off).
    infinite_sessions: events_pb2.InfiniteSessionConfig = field(
        default_factory=events_pb2.InfiniteSessionConfig
    )


@dataclass
class SessionState:
    """What the daemon keeps in memory about a session while it is in use.

    Who changes which field is written down in ``TurnHost``'s docstring.
    """

    last_sequence: int
    last_event_id: str
    # Model context (recent user and assistant messages), loaded on the first
    # turn and then extended as messages are committed, so a turn never
    # re-reads the history.
    context: ContextWindow | None = None
    turn: RunningTurn | None = None
    # Mirror of the record's durable queue of messages waiting for a turn.
    pending: list[PendingMessage] = field(default_factory=list)
    # Recent user messages' ids and sequence numbers, oldest first.
    recent_messages: dict[str, int] = field(default_factory=dict)
    # An import replacing the session holds its queue: a turn's end starts nothing.
    queue_held: bool = False
    # Callers of send_message_and_wait, by user message id.
    turn_waiters: dict[str, asyncio.Future[TurnOutcome]] = field(default_factory=dict)
    # Recently recorded tool results, oldest first (retries are recognised).
    tool_results: dict[str, events_pb2.ToolResult] = field(default_factory=dict)
    # Recently recorded permission decisions (request id -> approved), likewise.
    permission_decisions: dict[str, bool] = field(default_factory=dict)

    def remember_tool_result(self, call_id: str, result: events_pb2.ToolResult) -> None:
        self.tool_results[call_id] = result
        if len(self.tool_results) > RECENT_TOOL_RESULTS:
            del self.tool_results[next(iter(self.tool_results))]

    def remember_messages(self, stored: Sequence[SessionEvent]) -> None:
        """Note the user messages' ids, tool results and permission decisions among
        committed events."""
        for event in stored:
            if event.type == ev.TOOL_EXECUTION_COMPLETE:
                complete = event.tool_execution_complete
                self.remember_tool_result(complete.tool_call_id, complete.result)
            elif event.type == ev.PERMISSION_COMPLETED:
                decision = event.permission_completed
                self.permission_decisions[decision.request_id] = decision.approved
                if len(self.permission_decisions) > RECENT_TOOL_RESULTS:
                    del self.permission_decisions[next(iter(self.permission_decisions))]
            elif event.type == ev.USER_MESSAGE:
                self.recent_messages[event.id] = event.sequence
                if len(self.recent_messages) > RECENT_MESSAGE_IDS:
                    del self.recent_messages[next(iter(self.recent_messages))]

    def resolve_waiter(self, message_id: str, outcome: TurnOutcome | BaseException) -> None:
        waiter = self.turn_waiters.pop(message_id, None)
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)

    def fail_waiters(self, error: BaseException) -> None:
        for message_id in list(self.turn_waiters):
            self.resolve_waiter(message_id, error)

    def check_sequence(self, session_id: str, expected_last_sequence: int | None) -> None:
        if expected_last_sequence is not None and expected_last_sequence != self.last_sequence:
            raise SequenceConflictError(session_id, expected_last_sequence, self.last_sequence)

    def known_message(self, message_id: str) -> tuple[SessionEvent, bool] | None:
        """The message as this session holds it, if it does, and whether it is queued."""
        if any(queued.message_id == message_id for queued in self.pending):
            return SessionEvent(id=message_id, type=ev.USER_MESSAGE), True
        sequence = self.recent_messages.get(message_id)
        if sequence is None:
            if self.turn is None or self.turn.user_message_id != message_id:
                return None
            sequence = 0  # taken from the queue, its start not committed yet
        return SessionEvent(id=message_id, sequence=sequence, type=ev.USER_MESSAGE), False


class TurnHost(Protocol):
    """What the turn engine and the scheduler may ask of the session service.

    Everything runs on the daemon's one event loop, so no lock guards a
    ``SessionState``; what keeps it consistent is who writes each field and
    that some writes happen with no ``await`` between a check and the change:

    - ``turn``: set only by ``TurnEngine.claim``, which the scheduler calls
      with no ``await`` after finding the session free or its turn just ended
      (so two sends cannot both start a turn). Cleared only by
      ``TurnScheduler.after_turn`` (nothing queued, or shutting down) or by
      ``release_turn`` (a turn whose start was never committed). The
      ``RunningTurn`` itself is the turn engine's.
    - ``pending``: the scheduler's. It changes the list before the commit that
      persists it (concurrent senders then queue behind it) and undoes its
      change when that commit fails; the store changes the durable queue one
      message at a time (``QueueEdit``), and every commit's callback copies
      the queue as committed back into ``pending`` (other daemons may queue
      messages too).
    - ``last_sequence``, ``last_event_id``, ``recent_messages`` and the growth
      of ``context``: the host's, in ``append``'s commit callback, which runs
      in commit order before any later commit's. A closing commit
      (``close_turn=True``) resolves the turn's waiter and calls the
      scheduler's ``after_turn`` in that same callback, so no new message can
      slip in ahead of the queue.
    - ``context``: loaded by ``load_context`` when a turn starts; while the
      session is idle the host's memory budget may drop it (back to None).
    - ``turn_waiters``: the host's (``send_message_and_wait``, a session's
      deletion, shutdown); the engines never touch them.

    The engines call the host; the host calls the engines (``TurnScheduler``
    for sends and turn ends, ``TurnEngine.cancel`` for aborts); neither keeps
    more of the other than this.
    """

    @property
    def store(self) -> Store:
        """Read-only: the engine reads a session's record when a turn starts."""
        ...

    @property
    def providers(self) -> ProviderRegistry:
        """Where a turn's model route comes from."""
        ...

    @property
    def max_prompt_bytes(self) -> int:
        """The largest answer a turn may record (an answer must fit in one event)."""
        ...

    @property
    def max_tool_rounds(self) -> int:
        """Model calls a turn may make before it fails (each tool round is one)."""
        ...

    @property
    def tool_call_timeout(self) -> float | None:
        """Seconds a tool call waits for a result before it is closed (None: no limit)."""
        ...

    @property
    def shutting_down(self) -> bool:
        """True once shutdown began: queued messages then wait for the next start."""
        ...

    async def append(
        self,
        session_id: str,
        events: Sequence[SessionEvent],
        *,
        open_turn: tuple[str, str] | None = None,
        close_turn: bool = False,
        expected_last_sequence: int | None = None,
        pending: list[PendingMessage] | None = None,
        queue: QueueEdit | None = None,
        fence: str | None = None,
    ) -> tuple[SessionRecord, list[SessionEvent]]:
        """Durably append ``events`` (and the queue, and the turn's opening or
        closing), then update the session's state and publish them. ``fence``:
        the turn these events belong to (the store refuses them once another
        daemon has taken the turn over)."""
        ...

    async def abort_elsewhere(self, record: SessionRecord, reason: str) -> bool:
        """Abort the session's open turn (``record``'s) on the daemon sharing the store
        that runs it, and wait for its end; False when none does."""
        ...

    def publish_ephemeral(self, session_id: str, event: SessionEvent) -> None:
        """Send a live-only event (a delta, the queue, idle) to the session's subscribers."""
        ...

    def has_audience(self, session_id: str) -> bool:
        """Whether anyone would receive a live-only event of the session."""
        ...

    def load_context(self, session_id: str) -> ContextWindow:
        """The session's model context, for a turn that is starting."""
        ...

    def release_turn(
        self, turn: RunningTurn, *, turn_started: bool, error: BaseException | None = None
    ) -> None:
        """Free the session after a turn whose start or end could not be committed."""
        ...
