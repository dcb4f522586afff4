"""The session core: every operation of the API, free of any transport.

The servicer unpacks requests and calls this; tests and other front ends can
call it directly. All writes go through the group committer and publish their
events to live subscribers in commit order. The turn engine and the scheduler
it drives see this service only as a ``state.TurnHost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from copilot_client.proto.v1 import copilot_pb2, events_pb2
from copilot_client.wire import LIFECYCLE_CREATED, LIFECYCLE_DELETED, LIFECYCLE_UPDATED
from copilotd import events as ev
from copilotd.config import DEFAULT_MAX_TOOL_ROUNDS
from copilotd.errors import (
    InvalidArgumentError,
    Reason,
    ServiceError,
    SessionNotFoundError,
    ShuttingDownError,
    StoreFullError,
    TurnTakenOverError,
)
from copilotd.events import SessionEvent, SessionMetadata
from copilotd.limits import (
    DEFAULT_MAX_PROMPT_BYTES,
    MAX_PAGE_SIZE,
)
from copilotd.providers import (
    ProviderRegistry,
    check_provider_config,
    public_provider_config,
)
from copilotd.sessions import live
from copilotd.sessions.branching import Branching
from copilotd.sessions.compaction import check_infinite_sessions
from copilotd.sessions.context_window import ContextWindow
from copilotd.sessions.creation import new_session
from copilotd.sessions.fanout import FanOut
from copilotd.sessions.history import History, Listings
from copilotd.sessions.idle_contexts import DEFAULT_BUDGET_BYTES, IdleContexts
from copilotd.sessions.lifecycle import LifecycleEvent, LifecycleFeed
from copilotd.sessions.peers import Delivery, PeerChanges
from copilotd.sessions.recovery import TurnRecovery
from copilotd.sessions.scheduler import TurnScheduler
from copilotd.sessions.sending import MessageSender
from copilotd.sessions.state import RunningTurn, SessionState, TurnOutcome
from copilotd.sessions.store_errors import store_errors as store_errors  # admin uses it too
from copilotd.sessions.tool_routing import ToolClient
from copilotd.sessions.tools import check_tools
from copilotd.sessions.turn_calls import TurnCalls
from copilotd.sessions.turns import TurnEngine
from copilotd.sessions.validation import (
    check_label,
    check_session_id,
)
from copilotd.store import (
    PendingMessage,
    QueueEdit,
    SessionRecord,
    Store,
    StoreChange,
)
from copilotd.store.committer import GroupCommitter
from copilotd.store.purger import Purger

log = logging.getLogger(__name__)

# Sessions kept in memory without a running turn; older ones are dropped and
# reloaded from the store when used again.
MAX_IDLE_STATES = 1024


class SessionService:
    """Create, resume, list, delete, talk to and read sessions."""

    def __init__(
        self,
        store: Store,
        committer: GroupCommitter,
        providers: ProviderRegistry,
        *,
        version: str,
        fanout: FanOut[SessionEvent] | None = None,
        max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES,
        idle_context_budget: int = DEFAULT_BUDGET_BYTES,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
        tool_call_timeout: float | None = None,
    ) -> None:
        self._store = store
        self._committer = committer
        self.fanout: FanOut[SessionEvent] = fanout or FanOut()
        self._history = History(store, self.fanout)
        # What the API's pure reads run through (``StoreReads``).
        self.reading = self._history.reads
        self.lifecycle = LifecycleFeed()
        self.providers = providers
        self.version = version
        self.max_prompt_bytes = max_prompt_bytes
        self.max_tool_rounds = max_tool_rounds
        self.tool_call_timeout = tool_call_timeout
        self._states: dict[str, SessionState] = {}
        # Bounds the memory of the cached contexts of idle sessions.
        self.idle_contexts = IdleContexts(idle_context_budget)
        self._delivery = Delivery(store, self.fanout, self.idle_contexts)
        self._turns = TurnEngine(self)
        self._scheduler = TurnScheduler(self, self._turns)
        # Deleted sessions' events are removed after the deletion, in steps.
        self.purger = Purger(committer)
        self._shutting_down = False
        self._peers = PeerChanges(store, self._states, self._delivery, self.lifecycle, self._forget)
        self._recovery = TurnRecovery(self, committer, self._state, self._turns, self._scheduler)
        sender = MessageSender(
            self, self._history, self._delivery, self._scheduler, self._record, self._state
        )
        # The API's send calls, as the sender's own methods (documented there).
        self.send_message = sender.send_message
        self.send_message_and_wait = sender.send_message_and_wait
        self._calls = TurnCalls(self.reading, self._record, self._states, self._state, self._turns)
        # Calls for turns that run on another daemon sharing the store (None: one daemon).
        self._relay = self._calls.relay
        # The API's calls on a running turn, likewise.
        self.abort_turn = self._calls.abort_turn
        self.handle_pending_tool_call = self._calls.handle_pending_tool_call
        self.handle_pending_permission = self._calls.handle_pending_permission
        self.abort_elsewhere = self._calls.abort_elsewhere  # for the scheduler (``TurnHost``)
        # The API's listings (``history.Listings``).
        listings = Listings(store, self._history)
        self.list_sessions, self.list_events = listings.list_sessions, listings.list_events
        branching = Branching(
            self, committer, self._turns, self._scheduler, self._record, self._state, self._created
        )
        self.fork_session = branching.fork_session
        self.rewind_session = branching.rewind_session

    @property
    def store(self) -> Store:
        return self._store

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    # -- state and writes ---------------------------------------------------

    def _state(self, record: SessionRecord) -> SessionState:
        session_id = record.metadata.session_id
        state = self._states.get(session_id)
        if state is None:
            state = SessionState(
                record.metadata.last_sequence,
                record.metadata.last_event_id,
                pending=list(record.pending),
            )
            self._states[session_id] = state
            if len(self._states) > MAX_IDLE_STATES:
                self._evict_idle_states()
        return state

    def _evict_idle_states(self) -> None:
        excess = len(self._states) - MAX_IDLE_STATES // 2
        idle = [
            sid
            for sid, s in self._states.items()
            # A session with subscribers keeps its state: it is what their
            # events are delivered from (``peers``).
            if s.turn is None
            and not s.pending
            and not s.turn_waiters
            and not self.fanout.has_audience(sid)
        ]
        for session_id in idle[:excess]:
            self.idle_contexts.take(session_id)
            del self._states[session_id]

    def _record(self, session_id: str) -> SessionRecord:
        check_session_id(session_id)
        record = self._store.get_session(session_id)
        if record is None:
            raise SessionNotFoundError(session_id)
        return record

    def _published(
        self,
        record: SessionRecord,
        stored: Sequence[SessionEvent],
        *,
        closed_turn: bool = False,
    ) -> None:
        """After a commit: advance the in-memory state and fan the events out.

        A commit that closes a turn hands the session to the next queued
        message (or to session.idle) here, before anyone can react to its
        turn_end.
        """
        session_id = record.metadata.session_id
        state = self._states.get(session_id)
        if state is None:
            self.fanout.publish(session_id, stored)
        else:
            if stored:
                # Other daemons' events before ours first; none twice.
                self._delivery.catch_up(session_id, state, stored[0].sequence - 1)
                stored = [event for event in stored if event.sequence > state.last_sequence]
            if not state.queue_held:
                state.pending[:] = record.pending  # the queue as committed, others' too
            self._delivery.deliver(session_id, state, stored)
        self.lifecycle.announce(LIFECYCLE_UPDATED, session_id, record.metadata)
        if closed_turn:
            if state is not None:
                if state.turn_waiters and stored:
                    outcome = TurnOutcome.from_closing_commit(stored)
                    state.resolve_waiter(outcome.message_id, outcome)
                self._scheduler.after_turn(session_id, state)
                if state.turn is None:
                    self.idle_contexts.park(session_id, state)
            else:
                self.publish_ephemeral(session_id, ev.make_event(ev.SESSION_IDLE))

    def release_turn(
        self, turn: RunningTurn, *, turn_started: bool, error: BaseException | None = None
    ) -> None:
        """Free the session after a turn whose start or end could not be committed."""
        state = self._states.get(turn.session_id)
        if state is None or state.turn is not turn:
            return
        if isinstance(error, TurnTakenOverError):
            # The daemon that took over closed the turn and runs the queue.
            state.resolve_waiter(turn.user_message_id, error)
            state.turn = None
        elif turn_started:
            if not isinstance(error, ServiceError):
                error = ServiceError("the turn's end could not be recorded; see the daemon log")
            state.resolve_waiter(turn.user_message_id, error)
            self._scheduler.after_turn(turn.session_id, state)
        else:
            # Nothing of the turn was written; queued messages wait for the
            # next send or the next start rather than failing one after another.
            state.turn = None
        if state.turn is None:
            self.idle_contexts.park(turn.session_id, state)

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
        """Durably append ``events``, then publish them; returns the record and stored events."""
        with store_errors(session_id):
            return await self._committer.submit(
                lambda writer: writer.append_events(
                    session_id,
                    events,
                    expected_last_sequence=expected_last_sequence,
                    open_turn=open_turn,
                    close_turn=close_turn,
                    pending=pending,
                    queue=queue,
                    fence=fence,
                ),
                on_commit=lambda result: self._published(
                    result[0], result[1], closed_turn=close_turn
                ),
            )

    def publish_ephemeral(self, session_id: str, event: SessionEvent) -> None:
        self._stamp(session_id, event)
        self.fanout.publish(session_id, [event])
        if self._store.relay is not None and event.type == ev.ASSISTANT_MESSAGE_DELTA:
            live.forward(self._store.relay, session_id, event)

    def _stamp(self, session_id: str, event: SessionEvent) -> None:
        """A live-only event carries the sequence and id of the last persisted one."""
        state = self._states.get(session_id)
        if state is not None:
            event.sequence = state.last_sequence
            event.parent_id = state.last_event_id

    def has_audience(self, session_id: str) -> bool:
        # On a shared store, subscribers of other daemons may want the deltas too.
        return self._store.relay is not None or self.fanout.has_audience(session_id)

    def load_context(self, session_id: str) -> ContextWindow:
        """The session's recent user and assistant messages (cached per session)."""
        state = self._states.get(session_id)
        if state is None:  # deleted since its turn began
            raise SessionNotFoundError(session_id)
        self.idle_contexts.take(session_id)
        if state.context is None:
            state.context = ContextWindow.load(self._store, session_id)
        return state.context

    # -- the API --------------------------------------------------------------

    async def create_session(self, config: copilot_pb2.SessionConfig) -> SessionMetadata:
        self._check_running()
        new = new_session(
            config, self.providers, version=self.version, max_prompt_bytes=self.max_prompt_bytes
        )
        metadata, start, session_id = new.metadata, new.start, new.metadata.session_id
        metadata.start_time.CopyFrom(start.timestamp)
        with store_errors(session_id):
            record, stored = await self._committer.submit(
                lambda writer: writer.create_session(metadata, [start])
            )
        if new.own_provider:
            await self.providers.hold_session_provider(session_id, config.provider)
        self._created(record, stored)
        log.info("created session %s (model %s)", session_id, metadata.model)
        return record.metadata

    def _created(self, record: SessionRecord, stored: list[SessionEvent]) -> None:
        """After the commit that made a session (created or forked): its state and news."""
        session_id = record.metadata.session_id
        self._state(record)
        self.fanout.publish(session_id, stored)
        self.lifecycle.announce(LIFECYCLE_CREATED, session_id, record.metadata)

    def get_session(self, session_id: str) -> SessionMetadata:
        return self._record(session_id).metadata

    async def resume_session(
        self,
        session_id: str,
        tail_events: int,
        provider: events_pb2.ProviderConfig | None = None,
        tools: Sequence[events_pb2.ToolDefinition] | None = None,
        continue_pending_work: bool = False,
        infinite_sessions: events_pb2.InfiniteSessionConfig | None = None,
    ) -> tuple[SessionMetadata, list[SessionEvent], bool]:
        """Record a session.resume; ``provider`` (the session's own, again) is held in memory.

        Returns the metadata, the last ``tail_events`` events and whether the
        session.resume was recorded: on a full store it is not, and the resume
        succeeds anyway, so that a user whose disk is full can still open and
        read their sessions (and delete some to make room).
        """
        self._check_running()
        record = await self.reading(self._record, session_id)
        state = self._state(record)
        resume = ev.make_event(
            ev.SESSION_RESUME,
            event_count=record.metadata.last_sequence,
            already_in_use=self.fanout.subscriber_count(session_id) > 0 or bool(state.turn_waiters),
            turn_running=state.turn is not None,
        )
        if provider is not None:
            check_provider_config(provider)
            resume.session_resume.provider.CopyFrom(public_provider_config(provider))
        if tools is not None:
            check_tools(tools, "tools")
            resume.session_resume.tools.extend(tools)
            resume.session_resume.tools_replaced = True
        if infinite_sessions is not None:
            check_infinite_sessions(infinite_sessions, "infinite_sessions")
            resume.session_resume.infinite_sessions.CopyFrom(infinite_sessions)
        recorded = True
        try:
            record, _ = await self.append(session_id, [resume])
        except StoreFullError as error:
            recorded = False
            log.warning("session %s resumed without a session.resume event: %s", session_id, error)
        if provider is not None:
            await self.providers.hold_session_provider(session_id, provider)
        if not continue_pending_work and await self._calls.close_not_continued(record, state):
            record = await self.reading(self._record, session_id)
        count = min(tail_events, MAX_PAGE_SIZE)
        tail = await self.reading(self._history.tail, session_id, count) if tail_events else []
        return record.metadata, tail, recorded

    async def delete_session(self, session_id: str) -> None:
        check_session_id(session_id)
        with store_errors(session_id):
            await self._committer.submit(lambda writer: writer.delete_session(session_id))
        await self._forget(session_id)
        log.info("deleted session %s", session_id)

    @contextlib.asynccontextmanager
    async def held_for_replace(self, session_id: str) -> AsyncIterator[int | None]:
        """Hold a session still while an import replaces it in one commit.

        Yields its last sequence (None: there is no such session) once its
        running turn has ended, its queue held back; the replacing commit
        should expect that sequence, so a message sent meanwhile makes it
        fail rather than land in the new history. If the body raises, the
        queue goes on; otherwise the old session is forgotten as if deleted.
        """
        state = self._states.get(session_id)
        held: list[PendingMessage] = []
        if state is not None:
            held, state.pending[:] = list(state.pending), []
            state.queue_held = True
            if state.turn is not None:
                await self._turns.cancel(state.turn, reason="replaced by an imported session")
        record = self._store.get_session(session_id)
        try:
            yield None if record is None else record.metadata.last_sequence
        except BaseException:
            if state is not None:
                state.queue_held = False
            if state is not None and held:
                state.pending[:0] = held
                if state.turn is None and not self._shutting_down:
                    self._scheduler.start_next(session_id, state)
            raise
        await self._forget(session_id)

    async def _forget(self, session_id: str) -> None:
        """What follows a session's removal from the store: its state, streams, turn, secrets."""
        self.purger.kick()
        state = self._states.pop(session_id, None)
        self.idle_contexts.take(session_id)
        self._turns.compactor.forget(session_id)
        terminal = ev.make_event(ev.SESSION_DELETED, session_id=session_id)
        if state is not None:
            state.fail_waiters(SessionNotFoundError(session_id))
            terminal.sequence = state.last_sequence
            terminal.parent_id = state.last_event_id
        self.fanout.end(session_id, SessionNotFoundError(session_id), last=[terminal])
        if state is not None and state.turn is not None:
            await self._turns.cancel(state.turn, reason="session deleted", interrupted=False)
        await self.providers.forget_session(session_id)
        self.lifecycle.announce(LIFECYCLE_DELETED, session_id, None)

    def list_models(self) -> tuple[list[copilot_pb2.ModelInfo], bool]:
        """The models on offer, default first, and whether only the offline model answers."""
        return self.providers.list_models(), self.providers.offline_only

    async def set_model(self, session_id: str, model: str) -> SessionMetadata:
        """Switch the session's model for its next turns (records session.model_change)."""
        self._check_running()
        if not model:
            raise InvalidArgumentError(
                "model is empty; name one of client.list_models()",
                Reason.ERROR_REASON_UNKNOWN_MODEL,
            )
        record = await self.reading(self._record, session_id)
        if record.metadata.model == model:
            return record.metadata
        if not record.metadata.provider.type:  # a session's own provider serves any name
            self.providers.check_model(model)
        change = ev.make_event(
            ev.SESSION_MODEL_CHANGE, previous_model=record.metadata.model, new_model=model
        )
        record, _ = await self.append(session_id, [change])
        log.info("session %s now uses model %s", session_id, model)
        return record.metadata

    async def compact_session(self, session_id: str, custom_instructions: str) -> SessionEvent:
        """Summarise the session's older events now (``compaction``); the complete event."""
        self._check_running()
        check_label(custom_instructions, "custom_instructions", self.max_prompt_bytes)
        self._state(self._record(session_id))
        return await self._turns.compactor.compact_now(session_id, custom_instructions)

    def list_pending_tool_calls(self, session_id: str) -> list[copilot_pb2.PendingToolCall]:
        return list(self._record(session_id).metadata.pending_tool_calls)

    def stream_events(
        self,
        session_id: str,
        after_sequence: int,
        include_rewound: bool = False,
        tool_client: copilot_pb2.ToolClient | None = None,
    ) -> AsyncGenerator[tuple[Sequence[SessionEvent], bool]]:
        """Persisted events after the cursor, then live ones; ``tool_client`` attached."""
        self._check_running()
        self._state(self._record(session_id))  # what live events are delivered from
        if tool_client is None:
            return self._history.follow(session_id, after_sequence, include_rewound=include_rewound)
        client = ToolClient.from_proto(session_id, tool_client)
        return self._turns.calls.routes.follow(
            client,
            lambda subscribed: self._history.follow(
                session_id, after_sequence, subscribed, include_rewound=include_rewound
            ),
            lambda: state.turn if (state := self._states.get(session_id)) else None,
            lambda event: self._stamp(session_id, event),
        )

    # -- lifecycle ----------------------------------------------------------------

    async def recover_interrupted_turns(self) -> int:
        """Close the turns no daemon runs any more (``TurnRecovery``); how many."""
        return await self._recovery.recover_interrupted_turns()

    def on_store_change(self, change: StoreChange | None) -> None:
        """Another daemon committed ``change`` (None: changes may have been missed)."""
        if change is not None and change.kind == "live":
            state = self._states.get(change.session_id)
            live.receive(self.fanout, self._delivery, state, change)
        elif change is not None and change.kind in ("assign", "tools"):
            self._tool_clients_changed(change)
        elif self._relay is None or not self._relay.heard(change):
            self._peers.changed(change)

    async def serve_relayed(self) -> None:
        """Serve the calls other daemons relayed to the turns running here (the periodic
        remedy for a missed notification), and have this daemon's own look again."""
        if self._relay is not None:
            self._relay.wake(None)
            await self._relay.serve_waiting()
        routes = self._turns.calls.routes
        if routes.remote is not None:
            await routes.remote.renew()
            for state in list(self._states.values()):
                await routes.reroute(state.turn)  # some may have gone with their daemon

    def _tool_clients_changed(self, change: StoreChange) -> None:
        """Another daemon assigned a call to a client attached here, or the clients
        attached to another daemon changed for a session whose turn may run here."""
        routes = self._turns.calls.routes
        if routes.remote is None:
            return
        if change.kind == "assign":
            routes.remote.spawn(routes.deliver_assigned(change))
        elif (state := self._states.get(change.session_id)) is not None:
            routes.remote.spawn(routes.reroute(state.turn))

    def catch_up_all(self) -> None:
        """Deliver whatever other daemons committed to the sessions followed here."""
        self._peers.catch_up_all()

    def watch_lifecycle(self, types: Sequence[str]) -> AsyncGenerator[list[LifecycleEvent]]:
        """Lifecycle events of every session (filtered by ``types`` when given), live."""
        self._check_running()
        return self.lifecycle.watch(types)

    async def shutdown(self) -> None:
        """Stop taking work; end running turns with a marker; end live streams."""
        self._shutting_down = True
        await self.purger.close()
        await self._turns.compactor.close()
        # Concurrently, so their end markers share commits; again while a send
        # that was already past its check has started one meanwhile.
        while running := [s.turn for s in self._states.values() if s.turn is not None]:
            await asyncio.gather(
                *(
                    self._turns.cancel(turn, reason="daemon shutting down", interrupted=True)
                    for turn in running
                )
            )
        for state in self._states.values():
            state.fail_waiters(ShuttingDownError())  # queued messages: they run after a restart
        self.fanout.end_all(ShuttingDownError())
        self.lifecycle.end_all(ShuttingDownError())

    def _check_running(self) -> None:
        if self._shutting_down:
            raise ShuttingDownError()

    @property
    def running_turns(self) -> int:
        return sum(1 for state in self._states.values() if state.turn is not None)
