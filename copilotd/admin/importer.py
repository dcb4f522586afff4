"""Importing an exported session: check the history as it streams in, stage it,
then make it a session in one commit.

The events are stored as they were exported: the same ids, timestamps and
payloads, and (because the history must be complete and in order) the same
sequence numbers and parent ids the store assigns on append. The only events
an import may add close a turn that was still running when the session was
exported: a synthetic result for each of its tool calls still waiting, then
the turn's end, so that no imported history ends in a half turn or holds a
call without its result (a provider refuses such a history).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from copilot_client.proto.admin.v1 import admin_pb2
from copilotd import events as ev
from copilotd.errors import (
    InvalidImportError,
    MessageIdTakenError,
    SequenceConflictError,
    SequenceOutOfRangeError,
    SequenceRewoundError,
    ServiceError,
    SessionExistsError,
)
from copilotd.events import SessionEvent, SessionMetadata
from copilotd.limits import SESSION_ID_MAX_LENGTH
from copilotd.providers import ToolCall
from copilotd.sessions.service import SessionService, store_errors
from copilotd.sessions.tools import (
    complete_event,
    interrupted_result,
    permission_completed_event,
)
from copilotd.sessions.validation import check_enum, check_session_id, is_valid_time
from copilotd.store import SessionRecord, StoreWriter
from copilotd.store.committer import GroupCommitter

log = logging.getLogger(__name__)

Conflict = admin_pb2.ImportConflict
INTERRUPTED_BY_EXPORT = "interrupted: the session was exported while this turn ran"
# The synthetic result's "(why)": "interrupted: no client answered (...)".
INTERRUPTED_CALL = "the session was exported while the call waited"
RENAME_SUFFIX = "-imported"
MAX_RENAME_ATTEMPTS = 1000
# One staging transaction's share of an import: small enough that other
# writers never wait long behind it, large enough that the syncs stay few.
STAGE_EVENTS: Final = 1000
STAGE_BYTES: Final = 1 << 20
# The range protobuf's Timestamp (and its JSON form) can represent.


class ImportTargetExistsError(SessionExistsError):
    def __init__(self, session_id: str) -> None:
        ServiceError.__init__(
            self,
            f"a session with id {session_id!r} already exists; import under a new id "
            "(CLI --rename, API on_conflict=RENAME) or replace the existing one "
            "(--overwrite, on_conflict=OVERWRITE)",
        )


@dataclass(frozen=True)
class ImportResult:
    metadata: SessionMetadata
    original_session_id: str
    replaced: bool
    closed_open_turn: bool


class HistoryCheck:
    """Checks an imported history event by event, as it streams in.

    The history must be a whole log: numbered 1..N, each event's parent the
    one before, ids unique (the store's index checks that, in
    ``stage_events``), stored types only, valid timestamps; N as the header
    announced. Every ``tool.execution_complete`` answers a call started
    before it and not yet answered, and a turn ends only after its calls'
    results. Only the open turns and the calls' ids are remembered, not the
    events.
    """

    def __init__(self, header: admin_pb2.ImportHeader) -> None:
        check_session_id(header.metadata.session_id)
        check_enum(header.on_conflict, Conflict, "header.on_conflict")
        for field in ("start_time", "modified_time"):
            if header.metadata.HasField(field):
                check_timestamp(getattr(header.metadata, field), f"header.metadata.{field}")
        self._header = header
        self.where = f"imported session {header.metadata.session_id!r}"
        self.count = 0
        self._previous_id = ""
        self._open_turns: dict[str, str] = {}
        # Call id -> the call and its turn, until its result arrives.
        self._open_calls: dict[str, tuple[ToolCall, str]] = {}
        self._answered_calls: set[str] = set()
        # Open calls waiting for a permission decision (ids).
        self._awaiting: set[str] = set()

    def check(self, event: SessionEvent) -> None:
        self.count += 1
        at = f"{self.where}, event {self.count}"
        if event.sequence != self.count:
            raise InvalidImportError(
                f"{at}: sequence {event.sequence} where {self.count} was expected; "
                "the history must be complete and in order"
            )
        if event.parent_id != self._previous_id:
            raise InvalidImportError(
                f"{at}: parent_id {event.parent_id!r} is not the previous event's id "
                f"{self._previous_id!r}; the history must be complete and in order"
            )
        if not event.id:
            raise InvalidImportError(f"{at}: the event id is empty")
        if event.ephemeral or event.type in ev.EPHEMERAL_TYPES or not event.type:
            raise InvalidImportError(
                f"{at}: type {event.type!r} is not an event that is stored; "
                "live-only events (deltas, session.idle) cannot be imported"
            )
        if not event.HasField("timestamp"):
            raise InvalidImportError(f"{at}: the event has no timestamp")
        check_timestamp(event.timestamp, f"{at}: timestamp")
        self._previous_id = event.id
        if event.type == ev.ASSISTANT_TURN_START:
            data = event.assistant_turn_start
            self._open_turns[data.turn_id] = data.user_message_id
        elif event.type == ev.ASSISTANT_TURN_END:
            turn_id = event.assistant_turn_end.turn_id
            self._check_calls_answered(turn_id, at)
            self._open_turns.pop(turn_id, None)
        elif event.type == ev.TOOL_EXECUTION_START:
            self._start_call(event, at)
        elif event.type == ev.TOOL_EXECUTION_COMPLETE:
            self._complete_call(event, at)
        elif event.type == ev.PERMISSION_REQUESTED:
            self._awaiting.add(event.permission_requested.tool_call_id)
        elif event.type == ev.PERMISSION_COMPLETED:
            self._awaiting.discard(event.permission_completed.tool_call_id)

    def _start_call(self, event: SessionEvent, at: str) -> None:
        start = event.tool_execution_start
        call_id = start.tool_call_id
        if not call_id:
            raise InvalidImportError(f"{at}: tool.execution_start has no tool_call_id")
        if call_id in self._open_calls or call_id in self._answered_calls:
            raise InvalidImportError(
                f"{at}: tool.execution_start for call {call_id!r} a second time; "
                "each tool call id is used once"
            )
        call = ToolCall(call_id, start.tool_name, start.arguments_json)
        self._open_calls[call_id] = (call, start.turn_id)

    def _complete_call(self, event: SessionEvent, at: str) -> None:
        call_id = event.tool_execution_complete.tool_call_id
        if self._open_calls.pop(call_id, None) is not None:
            self._answered_calls.add(call_id)
            return
        if call_id in self._answered_calls:
            raise InvalidImportError(
                f"{at}: tool.execution_complete for call {call_id!r} a second time; "
                "a tool call has exactly one result"
            )
        raise InvalidImportError(
            f"{at}: tool.execution_complete for call {call_id!r}, which has no "
            "tool.execution_start before it; every result answers a recorded call"
        )

    def _check_calls_answered(self, turn_id: str, at: str) -> None:
        for call_id, (_, call_turn) in self._open_calls.items():
            if call_turn == turn_id:
                raise InvalidImportError(
                    f"{at}: turn {turn_id!r} ends while its tool call {call_id!r} has no "
                    "tool.execution_complete; a turn ends after its calls' results"
                )

    def finish(self) -> list[SessionEvent]:
        """Check the count; the events that close a turn the history leaves open.

        Those are a synthetic result for each call still waiting (as an abort
        gives them; an open permission request denied before it), then the
        turn's end; none when every turn ended.
        """
        if self.count != self._header.event_count:
            raise InvalidImportError(
                f"{self.where}: {self.count} events arrived but the header announces "
                f"{self._header.event_count}; the export is truncated or was edited"
            )
        if not self.count:
            raise InvalidImportError(
                f"{self.where}: the history has no events; there is nothing to import"
            )
        if not self._open_turns:
            if self._open_calls:
                call_id = next(iter(self._open_calls))
                raise InvalidImportError(
                    f"{self.where}: tool call {call_id!r} has no tool.execution_complete and "
                    "no turn of the history is running; every call has a result"
                )
            return []
        turn_id, user_message_id = next(reversed(self._open_turns.items()))
        result = interrupted_result(INTERRUPTED_CALL)
        closing = []
        for call, call_turn in self._open_calls.values():
            if call.call_id in self._awaiting:  # denied first, as the daemon closes one
                closing.append(
                    permission_completed_event(
                        call.call_id, call_turn, approved=False, reason=result.text_result_for_llm
                    )
                )
            closing.append(complete_event(call, call_turn, result))
        end = ev.make_event(
            ev.ASSISTANT_TURN_END,
            turn_id=turn_id,
            user_message_id=user_message_id,
            reason=ev.TurnEndReason.TURN_END_REASON_INTERRUPTED,
            message=INTERRUPTED_BY_EXPORT,
        )
        return [*closing, end]


def check_timestamp(stamp: Timestamp, where: str) -> None:
    """Refuse a time protobuf's JSON mapping (and so an export) cannot represent."""
    if not is_valid_time(stamp):
        raise InvalidImportError(
            f"{where} is not a valid time (seconds={stamp.seconds}, nanos={stamp.nanos}): it must "
            "lie between 0001-01-01 and 9999-12-31 with nanos from 0 to 999999999"
        )


def rename_candidates(session_id: str) -> list[str]:
    """``<id>-imported``, ``<id>-imported-2``, …, each within the id length limit."""
    candidates = []
    for number in range(1, MAX_RENAME_ATTEMPTS + 1):
        suffix = RENAME_SUFFIX if number == 1 else f"{RENAME_SUFFIX}-{number}"
        candidates.append(session_id[: SESSION_ID_MAX_LENGTH - len(suffix)] + suffix)
    return candidates


class Importer:
    """Streams an ImportSession into a staged log, then commits it in one transaction.

    Memory and the time other writers wait stay bounded whatever the size
    of the history: events are checked as they arrive and staged in
    transactions of at most ``STAGE_EVENTS`` events or ``STAGE_BYTES`` bytes;
    only the last transaction makes the session visible (replacing the old
    one with ``IMPORT_CONFLICT_OVERWRITE``, which stays whole until then).
    A failed import discards its staged log; one a crash cut short is
    discarded when the store next opens.
    """

    def __init__(self, service: SessionService, committer: GroupCommitter) -> None:
        self._service = service
        self._committer = committer

    async def import_session(
        self, requests: AsyncIterable[admin_pb2.ImportSessionRequest]
    ) -> ImportResult:
        stream = aiter(requests)
        first = await anext(stream, None)
        if first is None:
            raise InvalidImportError("the ImportSession stream was empty; send the header first")
        if not first.HasField("header"):
            raise InvalidImportError("the first ImportSession request must carry the header")
        header = first.header
        check = HistoryCheck(header)
        metadata = SessionMetadata()
        metadata.CopyFrom(header.metadata)
        metadata.ClearField("modified_time")  # the last event's time, once staged
        with store_errors(metadata.session_id):
            staging = await self._committer.submit(lambda writer: writer.begin_import(metadata))
        try:
            closed_open_turn = await self._stage(staging, check, first, stream)
            result = await self._commit(staging, header, closed_open_turn)
        except BaseException:
            # Shielded: a caller that went away must not leave the staged log.
            await asyncio.shield(
                self._committer.submit(lambda writer: writer.discard_import(staging))
            )
            self._service.purger.kick()
            raise
        log.info(
            "imported session %s%s (%d events)",
            result.metadata.session_id,
            f" (exported as {result.original_session_id})" if result.original_session_id else "",
            check.count,
        )
        return result

    async def _stage(
        self,
        staging: int,
        check: HistoryCheck,
        first: admin_pb2.ImportSessionRequest,
        rest: AsyncIterator[admin_pb2.ImportSessionRequest],
    ) -> bool:
        """Check and stage every event; returns whether an open turn had to be closed."""
        batch: list[SessionEvent] = []
        size = 0
        request: admin_pb2.ImportSessionRequest | None = first
        while request is not None:
            for event in request.events:
                check.check(event)
                batch.append(event)
                size += event.ByteSize()
                if len(batch) >= STAGE_EVENTS or size >= STAGE_BYTES:
                    await self._stage_batch(staging, check, batch)
                    batch, size = [], 0
            request = await anext(rest, None)
            if request is not None and request.HasField("header"):
                raise InvalidImportError("only the first ImportSession request may carry a header")
        closing = check.finish()
        batch.extend(closing)
        await self._stage_batch(staging, check, batch)
        return bool(closing)

    async def _stage_batch(
        self, staging: int, check: HistoryCheck, events: list[SessionEvent]
    ) -> None:
        if not events:
            return
        try:
            with store_errors():
                await self._committer.submit(lambda writer: writer.stage_events(staging, events))
        except MessageIdTakenError:
            raise InvalidImportError(
                f"{check.where}: an event id is repeated in the history; each event needs its own"
            ) from None
        except (SequenceOutOfRangeError, SequenceRewoundError):
            raise InvalidImportError(
                f"{check.where}: a session.snapshot_rewind event rewinds to a sequence that is "
                "not a kept event before it (to_sequence must be at least 1, below the rewind's "
                "own sequence, and not cut by an earlier rewind)"
            ) from None

    async def _commit(
        self, staging: int, header: admin_pb2.ImportHeader, closed_open_turn: bool
    ) -> ImportResult:
        original_id = header.metadata.session_id
        mode = header.on_conflict or Conflict.IMPORT_CONFLICT_FAIL
        if mode == Conflict.IMPORT_CONFLICT_OVERWRITE:
            async with self._service.held_for_replace(original_id) as last_sequence:

                def replace(writer: StoreWriter) -> tuple[SessionRecord, bool]:
                    if last_sequence is not None:  # a message sent meanwhile fails the commit
                        writer.append_events(original_id, [], expected_last_sequence=last_sequence)
                    return writer.commit_import(staging, original_id, replace=True)

                try:
                    with store_errors(original_id):
                        record, replaced = await self._committer.submit(replace)
                except SequenceConflictError as error:
                    error.message = (
                        f"session {original_id!r} changed while the import was replacing it "
                        "(a message was sent to it); nothing was imported and the session was "
                        "left as it is: import again"
                    )
                    raise
            return _result(record, original_id, replaced, closed_open_turn)
        candidates = [original_id]
        if mode == Conflict.IMPORT_CONFLICT_RENAME:
            candidates.extend(rename_candidates(original_id))
        for session_id in candidates:
            try:
                with store_errors(session_id):
                    record, _ = await self._committer.submit(
                        functools.partial(_commit_as, staging=staging, session_id=session_id)
                    )
            except SessionExistsError:
                continue
            return _result(record, original_id, False, closed_open_turn)
        raise ImportTargetExistsError(original_id)


def _commit_as(writer: StoreWriter, *, staging: int, session_id: str) -> tuple[SessionRecord, bool]:
    return writer.commit_import(staging, session_id, replace=False)


def _result(
    record: SessionRecord, original_id: str, replaced: bool, closed_open_turn: bool
) -> ImportResult:
    session_id = record.metadata.session_id
    return ImportResult(
        metadata=record.metadata,
        original_session_id=original_id if session_id != original_id else "",
        replaced=replaced,
        closed_open_turn=closed_open_turn,
    )
