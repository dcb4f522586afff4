"""A handle on one daemon-owned session: send, wait, watch, read history."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from ._branching import rewind_session
from ._compaction import CompactionResult, compact_session
from ._errors import (
    CopilotError,
    DaemonTimeoutError,
    DaemonUnavailableError,
    SessionFailedError,
)
from ._event_stream import EventHandler, EventStream, Reattached, WaiterItem, seen
from ._history import read_events
from ._permissions import PermissionHandlerFunc
from ._session_events import SessionEvent, SessionEventType
from ._tool_calls import answer_tool_call, decide_permission, list_pending_calls
from ._tools import (
    Tool,
    ToolInvocation,
    ToolResult,
    ToolRunner,
    invocation_of,
)
from ._types import MessageOptions, SessionMetadata
from .proto.v1 import copilot_pb2
from .service import CALL_TIMEOUT, ServiceClient, UseCallTimeout, per_call

__all__ = ["CopilotSession", "EventHandler"]

logger = logging.getLogger("copilot_client")

# After a turn's end, how long send_and_wait waits for the session.idle that
# follows it (so that an immediate next send does not race the turn's end).
IDLE_GRACE = 2.0


class CopilotSession:
    """A session held by the daemon, created or resumed by a ``CopilotClient``.

    The data stays in the daemon: :meth:`destroy` only detaches this handle.
    Use ``async with session:`` to detach automatically.
    """

    def __init__(
        self,
        transport: ServiceClient,
        metadata: SessionMetadata,
        *,
        on_destroy: Callable[[CopilotSession], None] | None = None,
        resume_recorded: bool = True,
        tools: Sequence[Tool] = (),
        on_permission_request: PermissionHandlerFunc | None = None,
    ) -> None:
        self._transport = transport
        self._metadata = metadata
        self._resume_recorded = resume_recorded
        self._on_destroy = on_destroy
        self._destroyed = False
        self._tool_runner = ToolRunner(
            metadata.session_id,
            tools,
            self._answer_tool_call,
            self._decide_permission,
            on_permission_request,
        )
        # Tells this handle apart from the other clients attached with tools.
        client_id = str(uuid.uuid4())
        self._events = EventStream(
            transport,
            metadata.session_id,
            metadata.last_sequence,
            self._check_usable,
            (lambda: self._tool_runner.tool_client(client_id)) if self._tool_runner else None,
        )
        if self._tool_runner:
            self.on(self._tool_runner.on_event)

    def __repr__(self) -> str:
        return f"CopilotSession(session_id={self.session_id!r})"

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self._metadata.session_id

    @property
    def metadata(self) -> SessionMetadata:
        """The metadata as last received from the daemon."""
        return self._metadata

    @property
    def resume_recorded(self) -> bool:
        """False when the daemon's store was full as this handle resumed the session.

        The session then works as usual for reading (and deleting), but its
        log has no ``session.resume`` event for this resume, and writes such
        as :meth:`send` raise ``ResourceExhaustedError`` until there is room.
        True for created sessions and for every resume that was recorded.
        """
        return self._resume_recorded

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.destroy()

    # -- calls ---------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._destroyed:
            raise CopilotError(
                f"session {self.session_id!r} was destroyed on this client; its data is "
                f"kept: call client.resume_session({self.session_id!r}) to use it again"
            )
        if self._events.deleted is not None:
            raise self._events.deleted

    async def send(
        self,
        options: MessageOptions | str | Mapping[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> str:
        """Sends a message; the turn then runs in the daemon.

        Args:
            options: The message, or just its prompt.
            timeout: Seconds the call may take; default the client's ``timeout``.

        Returns:
            The message id (the id of the persisted ``user.message`` event).

        While a turn runs, the message waits for it (``mode="enqueue"``) or
        aborts it and runs next (``mode="immediate"``).

        Raises:
            InvalidArgumentError: The prompt is empty or too large.
            SequenceConflictError: ``expected_last_sequence`` was given and the
                session has moved on; nothing was written.
        """
        self._check_usable()
        return await self._send(
            MessageOptions.coerce(options), message_id="", deadline=per_call(timeout)
        )

    async def _send(
        self, message: MessageOptions, message_id: str, deadline: float | UseCallTimeout | None
    ) -> str:
        request = message.to_request(self.session_id, message_id, copilot_pb2.SendMessageRequest)
        response = await self._transport.call(
            self._transport.stub.SendMessage, request, deadline=deadline
        )
        return response.message_id

    async def send_and_wait(
        self,
        options: MessageOptions | str | Mapping[str, Any],
        timeout: float = 60.0,  # noqa: ASYNC109 (the Copilot SDK's signature)
    ) -> SessionEvent | None:
        """Sends a message and waits until its turn ends.

        Args:
            options: The message, or just its prompt.
            timeout: Seconds to wait. The turn is NOT aborted on timeout.

        Returns:
            The turn's last ``assistant.message`` event, or ``None`` if it had none.

        Raises:
            TimeoutError: The turn did not end within ``timeout``.
            SessionFailedError: The turn reported a ``session.error``.

        With no event handler registered, this is one call that returns the
        turn's outcome; with handlers, they see every event of the turn
        before this returns. Either way it rides out a restart of the
        daemon: the message (sent with an id of this client's choosing) is
        looked up in the log and recorded once.
        """
        self._check_usable()
        message = MessageOptions.coerce(options)
        message_id = str(uuid.uuid4())
        end = asyncio.get_running_loop().time() + timeout
        if self._events.handlers:
            return await self._send_and_wait_streamed(message, message_id, end, resend=False)
        request = message.to_request(
            self.session_id, message_id, copilot_pb2.SendMessageAndWaitRequest
        )
        try:
            async with asyncio.timeout_at(end):
                # No gRPC deadline: the turn may run long; `timeout` bounds the wait.
                response = await self._transport.call(
                    self._transport.stub.SendMessageAndWait, request, deadline=None
                )
        except DaemonUnavailableError:
            logger.debug("daemon unavailable during message %s: looking it up", message_id)
            return await self._send_and_wait_streamed(message, message_id, end, resend=True)
        if not self._events.running:
            self._events.last_sequence = max(self._events.last_sequence, response.turn_end.sequence)
        if response.HasField("error"):
            raise SessionFailedError(SessionEvent.from_proto(response.error))
        return SessionEvent.from_proto(response.answer) if response.HasField("answer") else None

    async def _send_and_wait_streamed(
        self, message: MessageOptions, message_id: str, end: float, *, resend: bool
    ) -> SessionEvent | None:
        """Sends over the unary call and waits for the turn's end on the event stream.

        ``resend``: the message may already be in the log (a call carrying it
        was cut); it is sent only if the stream's catch-up does not show it.
        """
        queue: asyncio.Queue[WaiterItem] = asyncio.Queue()
        self._events.waiters.add(queue)  # before sending: the turn's events may beat the reply
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(end):
                await self._send_once(queue, message, message_id, resend=resend)
                answer, failure, replayed = await self._wait_turn_end(queue, message_id)
            if not replayed:  # after a catch-up, the ephemeral session.idle is lost
                await self._wait_idle(queue, max(0.0, min(IDLE_GRACE, end - loop.time())))
        finally:
            self._events.waiters.discard(queue)
            if not (self._events.waiters or self._events.handlers or self._events.attached):
                await self._events.stop()  # only send_and_wait needed it
        if failure is not None:
            raise SessionFailedError(failure)
        return answer

    async def _send_once(
        self,
        queue: asyncio.Queue[WaiterItem],
        message: MessageOptions,
        message_id: str,
        *,
        resend: bool,
    ) -> None:
        """Sends the message unless the log shows it, across outages of the daemon.

        A send cut by an outage may or may not have been recorded: wait for
        the stream to re-attach, whose catch-up then shows the message if it
        was, and send (with the same id) only if it was not.
        """
        while True:
            await self._events.ensure_live()
            if resend and seen(queue, message_id):
                return
            attachments = self._events.attachments
            try:
                await self._send(message, message_id, CALL_TIMEOUT)
                return
            except DaemonTimeoutError:
                raise  # the daemon is there but frozen: waiting for a re-attach may never end
            except DaemonUnavailableError:
                logger.debug("daemon unavailable sending %s: looking it up", message_id)
            resend = True
            await self._events.wait_attached_after(attachments)

    async def _wait_turn_end(
        self, queue: asyncio.Queue[WaiterItem], message_id: str
    ) -> tuple[SessionEvent | None, SessionEvent | None, bool]:
        """The turn's last answer, its ``session.error`` if any, and whether
        its end came from a catch-up."""
        answer: SessionEvent | None = None
        failure: SessionEvent | None = None
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Reattached) or item.event.data.user_message_id != message_id:
                continue
            event = item.event
            if event.type is SessionEventType.ASSISTANT_MESSAGE:
                answer = event
            elif event.type is SessionEventType.SESSION_ERROR:
                failure = event
            elif event.type is SessionEventType.ASSISTANT_TURN_END:
                return answer, failure, item.replayed

    @staticmethod
    async def _wait_idle(queue: asyncio.Queue[WaiterItem], grace: float) -> None:
        """Waits briefly for the ``session.idle`` that follows a turn's end."""
        try:
            async with asyncio.timeout(grace):
                while True:
                    item = await queue.get()
                    if isinstance(item, BaseException | Reattached):
                        return
                    event = item.event
                    if event.type is SessionEventType.SESSION_IDLE or not event.ephemeral:
                        return  # idle, or a later turn has begun
        except TimeoutError:
            return

    async def set_model(
        self,
        model: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> None:
        """Switches the session to ``model`` for its next turns.

        Recorded as a ``session.model_change`` event; a running turn keeps
        its model.

        Raises:
            InvalidArgumentError: No provider of the daemon offers ``model``
                (see ``client.list_models()``).
        """
        self._check_usable()
        request = copilot_pb2.SetModelRequest(session_id=self.session_id, model=model)
        response = await self._transport.call(
            self._transport.stub.SetModel, request, deadline=per_call(timeout)
        )
        self._metadata = SessionMetadata.from_proto(response.session)

    async def compact(
        self,
        custom_instructions: str | None = None,
        *,
        timeout: float = 300.0,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> CompactionResult:
        """Summarises the conversation's older part now; returns once it is recorded.

        The model then sees the system message, the summary and the events
        after the range it covers; the log keeps every event. A compaction
        already under way is waited for instead. The timeout does not stop
        the compaction: it goes on in the daemon.

        Args:
            custom_instructions: What the summary should keep, besides the usual.
            timeout: Seconds to wait (a summary is one or more model calls).

        Raises:
            NothingToCompactError: The model already sees only the summary and
                the latest turns, which always go to it verbatim.
            CompactionFailedError: The model could not summarise.
        """
        self._check_usable()
        return await compact_session(
            self._transport, self.session_id, custom_instructions, deadline=timeout
        )

    async def abort(
        self,
        reason: str = "",
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> bool:
        """Aborts the running turn, whoever started it.

        Returns:
            False when no turn was running.
        """
        self._check_usable()
        request = copilot_pb2.AbortTurnRequest(session_id=self.session_id, reason=reason)
        response = await self._transport.call(
            self._transport.stub.AbortTurn, request, deadline=per_call(timeout)
        )
        return response.aborted

    async def rewind(
        self,
        to_sequence: int,
        *,
        abort_turn: bool = False,
        reason: str = "",
        expected_last_sequence: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> SessionEvent:
        """Takes the conversation back to the event ``to_sequence``: the model and
        ``get_messages()`` no longer see the events after it, which stay in the log
        (``get_messages(include_rewound=True)``). Recorded as one
        ``session.snapshot_rewind`` event, returned; new events get new sequences.

        Raises:
            TurnRunningError: A turn runs; ``abort_turn=True`` aborts it first.
            InvalidPointError: The point is inside a turn or a tool call, rewound
                already, or not an event before the last.
            SequenceConflictError: ``expected_last_sequence`` is not the last sequence.
        """
        self._check_usable()
        self._metadata, event = await rewind_session(
            self._transport,
            self.session_id,
            to_sequence,
            abort_turn=abort_turn,
            reason=reason,
            expected_last_sequence=expected_last_sequence,
            deadline=per_call(timeout),
        )
        return event

    async def get_messages(
        self,
        *,
        after_sequence: int = 0,
        limit: int | None = None,
        include_rewound: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> list[SessionEvent]:
        """The persisted events, oldest first, read page by page.

        Args:
            after_sequence: Only events with a greater sequence number.
            limit: At most this many events; ``None`` for all.
            include_rewound: Also the events rewinds cut (for audit).
            timeout: Seconds each page's call may take; default the client's ``timeout``.
        """
        self._check_usable()
        return await read_events(
            self._transport,
            self.session_id,
            after_sequence=after_sequence,
            limit=limit,
            deadline=per_call(timeout),
            include_rewound=include_rewound,
        )

    get_events = get_messages

    # -- tools ---------------------------------------------------------------

    async def pending_tool_calls(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> list[ToolInvocation]:
        """The tool calls of this session waiting for a client's result."""
        self._check_usable()
        calls = await self._pending_calls(deadline=per_call(timeout))
        return [invocation_of(self.session_id, call) for call in calls]

    async def _pending_calls(
        self, *, deadline: float | UseCallTimeout | None = CALL_TIMEOUT
    ) -> list[copilot_pb2.PendingToolCall]:
        return await list_pending_calls(self._transport, self.session_id, deadline=deadline)

    async def handle_pending_tool_call(
        self,
        tool_call_id: str,
        result: ToolResult | str | Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> bool:
        """Records the result of a waiting call (text, a JSON-serialisable value or a
        ``ToolResult``); False when this same result was already recorded (a retry).

        Raises:
            UnknownToolCallError: No such call waits in the session.
            ToolCallAnsweredError: The call already has a different result.
        """
        self._check_usable()
        return await self._answer_tool_call(
            tool_call_id, ToolResult.coerce(result), deadline=per_call(timeout)
        )

    async def _answer_tool_call(
        self,
        tool_call_id: str,
        result: ToolResult,
        *,
        deadline: float | UseCallTimeout | None = CALL_TIMEOUT,
    ) -> bool:
        answer = (self.session_id, tool_call_id, result)
        return await answer_tool_call(self._transport, *answer, deadline=deadline)

    async def handle_pending_permission(
        self,
        request_id: str,
        approved: bool,
        reason: str = "",
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline)
    ) -> bool:
        """Records a decision on a waiting permission request (its ``request_id`` is
        the call's ``tool_call_id``), for an app deciding itself rather than with
        ``on_permission_request``; False when this same decision was already recorded.

        Raises:
            UnknownPermissionRequestError: No such request waits in the session.
            PermissionAnsweredError: The request already has the other decision.
        """
        self._check_usable()
        return await self._decide_permission(
            request_id, approved, reason, deadline=per_call(timeout)
        )

    async def _decide_permission(
        self,
        request_id: str,
        approved: bool,
        reason: str,
        *,
        deadline: float | UseCallTimeout | None = CALL_TIMEOUT,
    ) -> bool:
        decision = (self.session_id, request_id, approved, reason)
        return await decide_permission(self._transport, *decision, deadline=deadline)

    @property
    def holds_tools(self) -> bool:
        """Whether this handle runs tools or decides permission requests (it then
        attaches with them: the daemon offers its tools and sends it calls)."""
        return bool(self._tool_runner)

    # -- events --------------------------------------------------------------

    def on(self, handler: EventHandler) -> Callable[[], None]:
        """Calls ``handler`` with every new event of this session, in order.

        Ephemeral events (deltas, ``session.idle``) are included. ``handler``
        may be a plain function or a coroutine function (awaited in order).
        An exception in a handler is logged and does not stop the others.
        Must be called from the event loop: the first call starts this
        session's event stream.

        Returns:
            A function that unsubscribes ``handler``.
        """
        self._check_usable()
        token = object()
        self._events.handlers[token] = handler
        self._events.start()

        def unsubscribe() -> None:
            self._events.handlers.pop(token, None)

        return unsubscribe

    async def attached_if_holding_tools(self) -> Self:
        """This handle, attached first if it holds tools: the model is offered its
        tools from the first message on, and the calls waiting for them
        (``continue_pending_work``) come to it."""
        if self.holds_tools:
            await self.attach()
        return self

    async def attach(self) -> None:
        """Attaches to the session's live events now and returns once the stream is live.

        ``on()`` and ``send_and_wait()`` attach by themselves; call this when
        events that other clients cause from now on must not be missed.

        Raises:
            DaemonTimeoutError: Not live within the client's ``timeout``.
        """
        self._check_usable()
        self._events.attached = True
        deadline = self._transport.call_timeout
        try:
            async with asyncio.timeout(deadline):
                await self._events.ensure_live()
        except TimeoutError:
            raise DaemonTimeoutError(
                f"the events of session {self.session_id!r} did not go live within "
                f"{deadline:g} s: the daemon at {self._transport.where} is not answering; "
                "the session keeps trying to attach",
                socket_path=self._transport.where,
            ) from None

    # -- lifetime ------------------------------------------------------------

    async def destroy(self) -> None:
        """Stops this session's event stream and detaches; the data stays in the daemon.

        Later calls on this object raise ``CopilotError``. Safe to call twice.
        """
        if self._destroyed:
            return
        self._destroyed = True
        self._events.handlers.clear()
        await self._tool_runner.aclose()
        self._events.fail_waiters(CopilotError(f"session {self.session_id!r} was destroyed"))
        await self._events.stop()
        if self._on_destroy is not None:
            self._on_destroy(self)

    disconnect = destroy
