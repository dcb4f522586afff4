"""Live deltas across daemons sharing a store: best-effort, never out of order.

A running turn's ``assistant.message_delta`` events are not stored; on a
shared store the daemon running the turn also sends them to the other
daemons (``Relay.publish_live``), split so that each fits in a database
notification. Each carries the sequence of the session's last stored event
when it was made. A daemon receiving one first delivers the stored events
up to that sequence, then publishes the delta to its subscribers, unless it
has already delivered a later stored event: then the delta is dropped. So a
subscriber on any daemon sees a delta after the stored events before it and
never after the stored message it belongs to; deltas may be missing (a lost
notification, a busy database), never the stored events, which stay
exactly-once and gap-free as they are read from the store.
"""

from __future__ import annotations

from copilotd import events as ev
from copilotd.events import SessionEvent
from copilotd.sessions.fanout import FanOut
from copilotd.sessions.peers import Delivery
from copilotd.sessions.state import SessionState
from copilotd.store import StoreChange
from copilotd.store.relay import Relay

# Text per live event: its notification (the event, base64, in JSON) stays
# under PostgreSQL's 8000-byte payload limit.
MAX_LIVE_TEXT_BYTES = 4096


def split_text(text: str, limit: int = MAX_LIVE_TEXT_BYTES) -> list[str]:
    """``text`` in pieces of at most ``limit`` bytes of UTF-8, never cutting a character."""
    pieces = []
    while text:
        cut = len(text.encode()[:limit].decode(errors="ignore")) or 1
        pieces.append(text[:cut])
        text = text[cut:]
    return pieces


def forward(relay: Relay, session_id: str, delta: SessionEvent) -> None:
    """Send a delta published here to the other daemons (in pieces if need be)."""
    data = delta.assistant_message_delta
    for piece in split_text(data.delta_content):
        part = SessionEvent()
        part.CopyFrom(delta)
        part.assistant_message_delta.delta_content = piece
        relay.publish_live(session_id, delta.sequence, part.SerializeToString())


def receive(
    fanout: FanOut[SessionEvent],
    delivery: Delivery,
    state: SessionState | None,
    change: StoreChange,
) -> None:
    """A delta another daemon sent (``change.payload``), made when the session's log
    ended at ``change.last_sequence``; ``state``: the session's here, if any."""
    session_id, made_after = change.session_id, change.last_sequence
    if state is None or not fanout.has_audience(session_id):
        return
    event = SessionEvent.FromString(change.payload)
    if event.type != ev.ASSISTANT_MESSAGE_DELTA:
        return
    delivery.catch_up(session_id, state, made_after)
    if state.last_sequence != made_after:
        return  # the log has moved on (the message it belongs to may be stored): too late
    fanout.publish(session_id, [event])
