"""The lifecycle feed: every session's creation, update and deletion, live.

``WatchLifecycle`` subscribers get these; nothing of it is stored, so a
watcher sees only what happens while it watches.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from copilot_client.proto.v1 import copilot_pb2
from copilot_client.wire import LIFECYCLE_TYPES
from copilotd import events as ev
from copilotd.errors import InvalidArgumentError, ServiceError
from copilotd.events import SessionMetadata
from copilotd.sessions.fanout import FanOut

LifecycleEvent = copilot_pb2.LifecycleEvent
LIFECYCLE_TOPIC = "lifecycle"


class LifecycleFeed:
    """Announces lifecycle events to the watchers of all sessions."""

    def __init__(self) -> None:
        self._fanout: FanOut[LifecycleEvent] = FanOut()

    def announce(self, event_type: str, session_id: str, metadata: SessionMetadata | None) -> None:
        # Every commit announces an update: with nobody watching, build nothing.
        if not self._fanout.subscriber_count(LIFECYCLE_TOPIC):
            return
        event = LifecycleEvent(type=event_type, session_id=session_id, timestamp=ev.now_timestamp())
        if metadata is not None:
            event.metadata.CopyFrom(metadata)
        self._fanout.publish(LIFECYCLE_TOPIC, [event])

    @property
    def watched(self) -> bool:
        """Whether anyone watches (so a change need not be read to be announced)."""
        return bool(self._fanout.subscriber_count(LIFECYCLE_TOPIC))

    async def watch(self, types: Sequence[str]) -> AsyncGenerator[list[LifecycleEvent]]:
        """Lifecycle events (filtered by ``types`` when given); an empty batch first, once live."""
        wanted = frozenset(types)
        if unknown := wanted - LIFECYCLE_TYPES:
            raise InvalidArgumentError(
                f"types has unknown lifecycle event types {sorted(unknown)}; the known ones "
                f"are {', '.join(sorted(LIFECYCLE_TYPES))} (leave types empty for all)"
            )
        subscription = self._fanout.subscribe(LIFECYCLE_TOPIC)
        try:
            yield []  # the subscription is live from here on
            while True:
                batch = await subscription.next_batch()
                selected = [e for e in batch if not wanted or e.type in wanted]
                if selected:
                    yield selected
        finally:
            self._fanout.unsubscribe(subscription)

    def end_all(self, error: ServiceError) -> None:
        """End every watch with ``error`` (the daemon is shutting down)."""
        self._fanout.end_all(error)
