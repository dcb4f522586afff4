"""Receiving and checking a session's events: a recording handler, the shape of a
turn, and the integrity of a stored log.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from copilot_client import SessionEvent, SessionEventType

T = SessionEventType
# Upper bound on waiting for an event; reaching it fails the test instead of hanging.
EVENT_WAIT = 30.0
TURN = [T.USER_MESSAGE, T.ASSISTANT_TURN_START, T.ASSISTANT_MESSAGE, T.ASSISTANT_TURN_END]


class Recorder:
    """An ``on()`` handler that keeps what it receives and lets a test await an event."""

    def __init__(self) -> None:
        self.events: list[SessionEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: SessionEvent) -> None:
        self.events.append(event)
        self._changed.set()

    @property
    def persisted(self) -> list[SessionEvent]:
        return [e for e in self.events if not e.ephemeral]

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Returns once ``condition()`` holds, re-checking after each received event."""
        async with asyncio.timeout(EVENT_WAIT):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def wait_type(self, event_type: SessionEventType, count: int = 1) -> SessionEvent:
        """The ``count``-th received event of ``event_type``, once it has arrived."""

        def matching() -> list[SessionEvent]:
            return [e for e in self.events if e.type is event_type]

        await self.wait_until(lambda: len(matching()) >= count)
        return matching()[count - 1]


def types(events: list[SessionEvent]) -> list[SessionEventType]:
    return [e.type for e in events]


def check_log_integrity(history: list[SessionEvent]) -> None:
    """Sequences 1..n without gaps; each event's parent is the previous event."""
    assert [e.sequence for e in history] == list(range(1, len(history) + 1))
    assert history[0].parent_id is None
    for previous, event in itertools.pairwise(history):
        assert event.parent_id == previous.id
    assert not any(e.ephemeral for e in history)
