"""A session's visible history: its log without the events rewinds cut.

The store's reads return every event of the log (the cut ones stay for audit
and export); the conversation (the model's context, ``get_messages()``,
search by default) goes on as if the cut events had not happened. This is the
one function that skips them, over any store, so that whatever else builds a
model context (a compaction's summary, say) reads the same history.
"""

from __future__ import annotations

from copilotd.store.base import SessionEvent, SessionNotFound, SessionRecord, Store


def read_visible(
    store: Store,
    session_id: str,
    *,
    after: int = 0,
    before: int | None = None,
    limit: int,
    newest_first: bool = False,
    max_bytes: int | None = None,
    include_rewound: bool = False,
    record: SessionRecord | None = None,
) -> list[SessionEvent]:
    """``Store.read_events`` without the rewound events (unless ``include_rewound``).

    Same window, order, limit and byte budget; ``record`` saves a lookup
    when the caller has the session's record at hand.
    """
    if record is None and not include_rewound:
        record = store.get_session(session_id)
        if record is None:
            raise SessionNotFound(session_id)
    if include_rewound or record is None or not record.rewound:
        return store.read_events(
            session_id,
            after=after,
            before=before,
            limit=limit,
            newest_first=newest_first,
            max_bytes=max_bytes,
        )
    last = record.metadata.last_sequence
    end = last + 1 if before is None else min(before, last + 1)
    windows = visible_windows(record, after, end)
    if newest_first:
        windows.reverse()
    events: list[SessionEvent] = []
    left = max_bytes
    for low, high in windows:
        if len(events) >= limit:
            break
        page = store.read_events(
            session_id,
            after=low,
            before=high,
            limit=limit - len(events),
            newest_first=newest_first,
            max_bytes=left,
        )
        for event in page:
            size = event.ByteSize()
            if left is not None and events and size > left:
                return events  # the byte budget is spent
            events.append(event)
            if left is not None:
                left = max(0, left - size)
        far_end = low + 1 if newest_first else min(high, end) - 1
        if left is not None and page and page[-1].sequence != far_end:
            return events  # the store cut the page short on bytes
    return events


def visible_windows(record: SessionRecord, after: int, before: int) -> list[tuple[int, int]]:
    """The exclusive windows ``(low, high)`` of kept events between ``after`` and
    ``before``, oldest first."""
    windows = []
    low = after
    for cut in record.rewound:
        if cut.last <= low:
            continue
        if cut.first >= before:
            break
        if cut.first - low >= 2:
            windows.append((low, cut.first))
        low = cut.last
    if before - low >= 2:
        windows.append((low, before))
    return windows


def is_visible(record: SessionRecord, sequence: int) -> bool:
    return not any(cut.first <= sequence <= cut.last for cut in record.rewound)
