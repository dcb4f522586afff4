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

from copilotd import events as ev
from copilotd.events import apply_to_metadata
from copilotd.store.base import (
    PendingMessage,
    QueueEdit,
    SequenceConflict,
    SequenceUnavailable,
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
    # A session made from metadata stands alone (an imported fork too).
    meta.parent_session_id = ""
    meta.fork_sequence = 0
    meta.rewound_events = 0
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
        if copy.type == ev.SESSION_SNAPSHOT_REWIND:
            _cut(record, copy)
        apply_to_metadata(meta, copy)
        stored.append(copy)
    return stored


def _cut(record: SessionRecord, rewind: SessionEvent) -> None:
    """Record the range a rewind cuts (up to the event before it) and fill it in."""
    meta = record.metadata
    data = rewind.session_snapshot_rewind
    to, last = data.to_sequence, meta.last_sequence
    if record.open_turn_id:
        raise TurnBusy(meta.session_id, f"turn {record.open_turn_id!r} is running")
    if not 1 <= to < last:
        raise SequenceUnavailable(meta.session_id, to, "range")
    if is_rewound(record, to):
        raise SequenceUnavailable(meta.session_id, to, "rewound")
    # ``to`` is kept, so an earlier range lies wholly before it or wholly inside the cut.
    kept = [cut for cut in record.rewound if cut.last < to]
    already = sum(cut.last - cut.first + 1 for cut in record.rewound if cut.first > to)
    data.first_rewound_sequence = to + 1
    data.last_rewound_sequence = last
    data.events_removed = last - to - already
    del record.rewound[:]
    record.rewound.extend(kept)
    record.rewound.add(first=to + 1, last=last)
    meta.rewound_events += data.events_removed


def is_rewound(record: SessionRecord, sequence: int) -> bool:
    """Whether a rewind cut the event ``sequence`` of the session."""
    return any(cut.first <= sequence <= cut.last for cut in record.rewound)


def check_fork_point(source: SessionRecord, up_to: int) -> None:
    """Refuse a fork point that is no kept event of ``source``."""
    session_id = source.metadata.session_id
    if not 1 <= up_to <= source.metadata.last_sequence:
        raise SequenceUnavailable(session_id, up_to, "range")
    if is_rewound(source, up_to):
        raise SequenceUnavailable(session_id, up_to, "rewound")


def fork_record(
    source: SessionRecord, session_id: str, up_to: int, log_number: int, last: SessionEvent
) -> SessionRecord:
    """The record of a fork of ``source`` at ``up_to`` (whose event is ``last``), before
    its own events: it inherits the source's logs up to there, and their rewinds."""
    record = SessionRecord(log_number=log_number)
    meta = record.metadata
    meta.CopyFrom(source.metadata)
    meta.session_id = session_id
    meta.parent_session_id = source.metadata.session_id
    meta.fork_sequence = up_to
    meta.last_sequence = up_to
    meta.last_event_id = last.id
    meta.modified_time.CopyFrom(last.timestamp)
    meta.turn_running = False
    meta.pending_messages = 0
    meta.pinned = False
    del meta.pending_tool_calls[:]
    if up_to < source.metadata.last_sequence:
        # The counters at an earlier point would need the whole history read.
        meta.message_count = 0
        meta.input_tokens = meta.output_tokens = 0
    for segment in source.ancestry:
        if segment.last_sequence >= up_to:
            record.ancestry.add(log_number=segment.log_number, last_sequence=up_to)
            break
        record.ancestry.append(segment)
    else:
        record.ancestry.add(log_number=source.log_number, last_sequence=up_to)
    record.rewound.extend(cut for cut in source.rewound if cut.last <= up_to)
    meta.rewound_events = sum(cut.last - cut.first + 1 for cut in record.rewound)
    return record


def referenced_logs(record: SessionRecord) -> list[int]:
    """Every log whose events the session reads: those it inherits, then its own."""
    return [segment.log_number for segment in record.ancestry] + [record.log_number]


def check_expected_sequence(record: SessionRecord, expected: int | None) -> None:
    """Refuse a writer whose idea of the log is stale, before anything changes."""
    actual = record.metadata.last_sequence
    if expected is not None and expected != actual:
        raise SequenceConflict(record.metadata.session_id, expected, actual)


def check_turn(
    record: SessionRecord,
    fence: str | None,
    open_turn: tuple[str, str] | None,
    close_turn: bool,
    queue: QueueEdit | None = None,
    pending: Sequence[PendingMessage] | None = None,
) -> None:
    """Refuse a fenced write of a turn that is not the open one, a second open turn,
    and a turn that takes no message from the queue while messages wait there."""
    session_id = record.metadata.session_id
    if fence is not None and record.open_turn_id != fence:
        now = f"turn {record.open_turn_id!r} is open" if record.open_turn_id else "no turn is open"
        raise TurnLost(session_id, fence, f"it was closed by another writer ({now})")
    if open_turn is not None and not close_turn and record.open_turn_id:
        raise TurnBusy(session_id, f"turn {record.open_turn_id!r} is running")
    if open_turn is not None and record.pending:
        left = {queued.message_id for queued in (record.pending if pending is None else pending)}
        left.discard("" if queue is None else queue.remove)
        if all(queued.message_id in left for queued in record.pending):
            waiting = len(record.pending)
            raise TurnBusy(
                session_id, f"{waiting} queued message(s) go first (first in, first out)"
            )


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
        self._full = False

    def take(self, size: int) -> bool:
        """Count an event of ``size`` bytes if it fits; False (nothing counted) if not.

        Once an event did not fit, none does: a read spanning several logs
        (a fork's) must not skip one and return a later, smaller one.
        """
        if self._left is None:
            return True
        if self._full or (size > self._left and not self._first):
            self._full = True
            return False
        self._left = max(0, self._left - size)
        self._first = False
        return True
