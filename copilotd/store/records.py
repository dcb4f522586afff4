"""What a write does to a session record, shared by every backend.

The backends differ only in how they keep bytes; keeping the rules for
sequence numbers, metadata, turns, listing keys and page tokens in one place
means they cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from typing import Final

from copilotd.events import apply_to_metadata
from copilotd.store.base import (
    PendingMessage,
    QueueEdit,
    SequenceConflict,
    SessionEvent,
    SessionMetadata,
    SessionRecord,
    TurnBusy,
    TurnLost,
)

U64: Final = struct.Struct(">Q")
MAX_U64: Final = 2**64 - 1


def new_record(
    metadata: SessionMetadata, log_number: int, events: Sequence[SessionEvent]
) -> tuple[SessionRecord, list[SessionEvent]]:
    """The record of a new session, its ``events`` already applied.

    The counters the store owns are reset, whatever the caller put there, so
    that they always describe the log the store actually holds.
    """
    if not metadata.session_id:
        raise ValueError("metadata.session_id must be set to create a session")
    record = SessionRecord(log_number=log_number)
    record.metadata.CopyFrom(metadata)
    meta = record.metadata
    meta.last_sequence = 0
    meta.last_event_id = ""
    meta.message_count = 0
    meta.compaction_count = 0
    meta.turn_running = False
    del meta.pending_tool_calls[:]
    if events:
        meta.start_time.CopyFrom(events[0].timestamp)
    if not meta.HasField("modified_time") and meta.HasField("start_time"):
        meta.modified_time.CopyFrom(meta.start_time)
    return record, append_to_record(record, events)


def append_to_record(record: SessionRecord, events: Sequence[SessionEvent]) -> list[SessionEvent]:
    """Number and chain ``events`` after the record's last one; return the stored copies.

    Copies, so that the caller's events are never changed behind its back
    (it may still hold them, e.g. to retry on another session).
    """
    meta = record.metadata
    stored: list[SessionEvent] = []
    for event in events:
        if event.ephemeral:
            raise ValueError(f"ephemeral event {event.type!r} cannot be stored")
        copy = SessionEvent()
        copy.CopyFrom(event)
        copy.sequence = meta.last_sequence + 1
        copy.parent_id = meta.last_event_id
        apply_to_metadata(meta, copy)
        stored.append(copy)
    return stored


def check_expected_sequence(record: SessionRecord, expected: int | None) -> None:
    """Refuse a writer whose idea of the log is stale, before anything changes."""
    actual = record.metadata.last_sequence
    if expected is not None and expected != actual:
        raise SequenceConflict(record.metadata.session_id, expected, actual)


def check_turn(
    record: SessionRecord, fence: str | None, open_turn: tuple[str, str] | None, close_turn: bool
) -> None:
    """Refuse a fenced write of a turn that is not the open one, and a second open turn."""
    session_id = record.metadata.session_id
    if fence is not None and record.open_turn_id != fence:
        now = f"turn {record.open_turn_id!r} is open" if record.open_turn_id else "no turn is open"
        raise TurnLost(session_id, fence, f"it was closed by another writer ({now})")
    if open_turn is not None and not close_turn and record.open_turn_id:
        raise TurnBusy(session_id, f"turn {record.open_turn_id!r} is running")


def queued_ids(pending: Sequence[PendingMessage] | None, queue: QueueEdit | None) -> list[str]:
    """The ids of messages a write adds to the queue (to check against the log)."""
    ids = [queued.message_id for queued in pending or ()]
    if queue is not None and queue.add is not None:
        ids.append(queue.add.message_id)
    return ids


def update_queue(
    record: SessionRecord, pending: Sequence[PendingMessage] | None, queue: QueueEdit | None
) -> None:
    """Replace the queue (``pending``), then apply one edit; a message queued already stays once."""
    update_pending(record, pending)
    if queue is None:
        return
    kept = [queued for queued in record.pending if queued.message_id != queue.remove]
    add = queue.add
    if add is not None and all(queued.message_id != add.message_id for queued in kept):
        kept.insert(0 if queue.first else len(kept), add)
    del record.pending[:]
    record.pending.extend(kept)
    record.metadata.pending_messages = len(record.pending)


def update_turn(record: SessionRecord, open_turn: tuple[str, str] | None, close_turn: bool) -> None:
    """Close, then open, so one call can end a turn and start the next."""
    if close_turn:
        record.open_turn_id = ""
        record.open_turn_user_message_id = ""
        record.metadata.turn_running = False
    if open_turn is not None:
        record.open_turn_id, record.open_turn_user_message_id = open_turn
        record.metadata.turn_running = True


def update_pending(record: SessionRecord, pending: Sequence[PendingMessage] | None) -> None:
    if pending is None:
        return
    del record.pending[:]
    record.pending.extend(pending)
    record.metadata.pending_messages = len(record.pending)


def has_open_turn(record: SessionRecord) -> bool:
    """Whether the session needs attention at start-up: a turn open or messages queued."""
    return record.metadata.turn_running or bool(record.open_turn_id) or bool(record.pending)


def session_key(session_id: str) -> bytes:
    if not session_id:
        raise ValueError("a session id must not be empty")
    return session_id.encode("utf-8")


def recency_key(metadata: SessionMetadata) -> bytes:
    """Listing key: sorts by modified time, then session id, as unsigned bytes."""
    nanos = min(max(metadata.modified_time.ToNanoseconds(), 0), MAX_U64)
    return U64.pack(nanos) + session_key(metadata.session_id)


def event_key(log_number: int, sequence: int) -> bytes:
    return U64.pack(log_number) + U64.pack(sequence)


def event_id_key(log_number: int, event_id: str) -> bytes:
    return U64.pack(log_number) + event_id.encode("utf-8")


def start_staged(record: SessionRecord, events: Sequence[SessionEvent]) -> list[SessionEvent]:
    """``append_to_record`` for a staged import: its first events also set ``start_time``."""
    meta = record.metadata
    if meta.last_sequence == 0 and events:
        meta.start_time.CopyFrom(events[0].timestamp)
    return append_to_record(record, events)


def finish_staged(record: SessionRecord, session_id: str) -> None:
    """The staged record as the session ``session_id``, with ``new_record``'s defaults."""
    meta = record.metadata
    meta.session_id = session_id
    if not meta.HasField("modified_time") and meta.HasField("start_time"):
        meta.modified_time.CopyFrom(meta.start_time)


def encode_page_token(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def decode_page_token(token: str) -> bytes:
    """The recency key a page token stands for; ``ValueError`` for anything else."""
    try:
        key = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        if len(key) <= U64.size:
            raise ValueError("too short")
        key[U64.size :].decode("utf-8")
    except (binascii.Error, ValueError):
        raise ValueError(f"malformed page token {token!r}") from None
    return key


class ByteBudget:
    """How many serialized bytes an event read may still return (``read_events``'s
    ``max_bytes``): the first event always fits, the others while the sum does."""

    def __init__(self, max_bytes: int | None) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, not {max_bytes}")
        self._left = max_bytes
        self._first = True

    def take(self, size: int) -> bool:
        """Count an event of ``size`` bytes if it fits; False (nothing counted) if not."""
        if self._left is None:
            return True
        if size > self._left and not self._first:
            return False
        self._left = max(0, self._left - size)
        self._first = False
        return True
