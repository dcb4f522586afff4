"""Reading a session's persisted events, and the one event the client makes up itself."""

from __future__ import annotations

import uuid

from ._session_events import SessionEvent, SessionEventType
from .proto.v1 import copilot_pb2, events_pb2
from .service import ServiceClient, UseCallTimeout

__all__ = ["EVENTS_PAGE_SIZE", "STREAM_STOPPED_ERROR_TYPE", "read_events", "stream_stopped_event"]

# ListEvents page size for get_messages().
EVENTS_PAGE_SIZE = 500
# error_type of the session.error handlers get when their stream ends for good.
STREAM_STOPPED_ERROR_TYPE = "event_stream"


async def read_events(
    transport: ServiceClient,
    session_id: str,
    *,
    after_sequence: int,
    limit: int | None,
    deadline: float | UseCallTimeout | None,
    include_rewound: bool = False,
) -> list[SessionEvent]:
    """A session's persisted events after ``after_sequence``, oldest first, page by page.

    ``ListEvents`` only reads: nothing is recorded and the session's last
    activity stays as it was.
    """
    events: list[SessionEvent] = []
    cursor = after_sequence
    while limit is None or len(events) < limit:
        wanted = EVENTS_PAGE_SIZE if limit is None else limit - len(events)
        request = copilot_pb2.ListEventsRequest(
            session_id=session_id,
            cursor=cursor,
            page_size=min(EVENTS_PAGE_SIZE, wanted),
            order=copilot_pb2.EVENT_ORDER_OLDEST_FIRST,
            include_rewound=include_rewound,
        )
        response = await transport.call(transport.stub.ListEvents, request, deadline=deadline)
        events.extend(SessionEvent.from_proto(event) for event in response.events)
        if not response.next_cursor or not response.events:
            break
        cursor = response.next_cursor
    return events if limit is None else events[:limit]


def stream_stopped_event(last_sequence: int, error: Exception) -> SessionEvent:
    """The ephemeral ``session.error`` handlers get when their stream ends for good."""
    proto = events_pb2.SessionEvent(
        id=str(uuid.uuid4()),
        type=SessionEventType.SESSION_ERROR.value,
        sequence=last_sequence,
        ephemeral=True,
        session_error=events_pb2.SessionErrorData(
            error_type=STREAM_STOPPED_ERROR_TYPE,
            message=f"the event stream stopped, no more events will arrive: {error}; "
            "call on() again (or resume the session) to watch it again",
        ),
    )
    proto.timestamp.GetCurrentTime()
    return SessionEvent.from_proto(proto)
