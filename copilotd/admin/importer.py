"""Importing an exported session: check the history, then create it in one commit.

The events are stored as they were exported: the same ids, timestamps and
payloads, and (because the history must be complete and in order) the same
sequence numbers and parent ids the store assigns on append. The only event
an import may add is the end of a turn that was still running when the
session was exported, so that no imported history ends in a half turn.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass

from copilot_client.proto.admin.v1 import admin_pb2
from copilotd import events as ev
from copilotd.errors import InvalidImportError, ServiceError, SessionExistsError
from copilotd.events import SessionEvent, SessionMetadata
from copilotd.limits import SESSION_ID_MAX_LENGTH
from copilotd.sessions.service import SessionService, store_errors
from copilotd.sessions.validation import check_session_id
from copilotd.store import SessionRecord, Store
from copilotd.store.committer import GroupCommitter

log = logging.getLogger(__name__)

Conflict = admin_pb2.ImportConflict
INTERRUPTED_BY_EXPORT = "interrupted: the session was exported while this turn ran"
RENAME_SUFFIX = "-imported"
MAX_RENAME_ATTEMPTS = 1000


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


async def collect_import(
    requests: AsyncIterable[admin_pb2.ImportSessionRequest],
) -> tuple[admin_pb2.ImportHeader, list[SessionEvent]]:
    """The header (first request only) and every event of an ImportSession stream."""
    header: admin_pb2.ImportHeader | None = None
    events: list[SessionEvent] = []
    async for request in requests:
        if request.HasField("header"):
            if header is not None:
                raise InvalidImportError("only the first ImportSession request may carry a header")
            header = request.header
        elif header is None:
            raise InvalidImportError("the first ImportSession request must carry the header")
        events.extend(request.events)
    if header is None:
        raise InvalidImportError("the ImportSession stream was empty; send the header first")
    return header, events


def check_history(header: admin_pb2.ImportHeader, events: Sequence[SessionEvent]) -> None:
    """Raise ``InvalidImportError`` unless ``events`` is a whole log, numbered 1..N and chained."""
    session_id = header.metadata.session_id
    check_session_id(session_id)
    where = f"imported session {session_id!r}"
    if len(events) != header.event_count:
        raise InvalidImportError(
            f"{where}: {len(events)} events arrived but the header announces "
            f"{header.event_count}; the export is truncated or was edited"
        )
    if not events:
        raise InvalidImportError(f"{where}: the history has no events; there is nothing to import")
    seen: set[str] = set()
    previous_id = ""
    for position, event in enumerate(events, start=1):
        at = f"{where}, event {position}"
        if event.sequence != position:
            raise InvalidImportError(
                f"{at}: sequence {event.sequence} where {position} was expected; "
                "the history must be complete and in order"
            )
        if event.parent_id != previous_id:
            raise InvalidImportError(
                f"{at}: parent_id {event.parent_id!r} is not the previous event's id "
                f"{previous_id!r}; the history must be complete and in order"
            )
        if not event.id or event.id in seen:
            raise InvalidImportError(f"{at}: the event id {event.id!r} is empty or repeated")
        if event.ephemeral or event.type in ev.EPHEMERAL_TYPES or not event.type:
            raise InvalidImportError(
                f"{at}: type {event.type!r} is not an event that is stored; "
                "live-only events (deltas, session.idle) cannot be imported"
            )
        if not event.HasField("timestamp"):
            raise InvalidImportError(f"{at}: the event has no timestamp")
        seen.add(event.id)
        previous_id = event.id


def open_turn_end(events: Sequence[SessionEvent]) -> SessionEvent | None:
    """The turn_end that closes a turn the history leaves open, or None."""
    open_turns: dict[str, str] = {}
    for event in events:
        if event.type == ev.ASSISTANT_TURN_START:
            data = event.assistant_turn_start
            open_turns[data.turn_id] = data.user_message_id
        elif event.type == ev.ASSISTANT_TURN_END:
            open_turns.pop(event.assistant_turn_end.turn_id, None)
    if not open_turns:
        return None
    turn_id, user_message_id = next(reversed(open_turns.items()))
    return ev.make_event(
        ev.ASSISTANT_TURN_END,
        turn_id=turn_id,
        user_message_id=user_message_id,
        reason=ev.TurnEndReason.TURN_END_REASON_INTERRUPTED,
        message=INTERRUPTED_BY_EXPORT,
    )


def rename_candidates(session_id: str) -> list[str]:
    """``<id>-imported``, ``<id>-imported-2``, …, each within the id length limit."""
    candidates = []
    for number in range(1, MAX_RENAME_ATTEMPTS + 1):
        suffix = RENAME_SUFFIX if number == 1 else f"{RENAME_SUFFIX}-{number}"
        candidates.append(session_id[: SESSION_ID_MAX_LENGTH - len(suffix)] + suffix)
    return candidates


class Importer:
    def __init__(self, service: SessionService, store: Store, committer: GroupCommitter) -> None:
        self._service = service
        self._store = store
        self._committer = committer

    async def import_session(
        self, header: admin_pb2.ImportHeader, events: Sequence[SessionEvent]
    ) -> ImportResult:
        check_history(header, events)
        original_id = header.metadata.session_id
        closing = open_turn_end(events)
        stored_events = [*events, closing] if closing is not None else list(events)
        mode = header.on_conflict or Conflict.IMPORT_CONFLICT_FAIL

        replaced = False
        if mode == Conflict.IMPORT_CONFLICT_OVERWRITE and self._store.get_session(original_id):
            # The one delete path: subscribers are ended, a running turn stopped.
            await self._service.delete_session(original_id)
            replaced = True
        if mode == Conflict.IMPORT_CONFLICT_RENAME:
            candidates = [original_id, *rename_candidates(original_id)]
        else:
            candidates = [original_id]
        for session_id in candidates:
            try:
                record = await self._create(header.metadata, session_id, stored_events)
            except SessionExistsError:
                continue
            break
        else:
            raise ImportTargetExistsError(original_id)
        log.info(
            "imported session %s%s (%d events)",
            session_id,
            f" (exported as {original_id})" if session_id != original_id else "",
            len(events),
        )
        return ImportResult(
            metadata=record.metadata,
            original_session_id=original_id if session_id != original_id else "",
            replaced=replaced,
            closed_open_turn=closing is not None,
        )

    async def _create(
        self, exported: SessionMetadata, session_id: str, events: list[SessionEvent]
    ) -> SessionRecord:
        metadata = SessionMetadata()
        metadata.CopyFrom(exported)
        metadata.session_id = session_id
        metadata.ClearField("modified_time")  # the last event's time, once appended
        with store_errors(session_id):
            record, _ = await self._committer.submit(
                lambda writer: writer.create_session(metadata, events)
            )
        return record
