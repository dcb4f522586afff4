"""Reclaiming deleted sessions' events in the background, a bounded step at a time.

``DeleteSession`` removes a session in one small transaction; its events,
already unreachable, are then removed here, ``STEP_EVENTS`` per operation
through the group committer. Each step shares a transaction with whatever
else is being written, so a session with a million events never holds the
writer (and every other session's turn) for more than one step.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from copilotd._committer import GroupCommitter
from copilotd._store import StoreError

log = logging.getLogger(__name__)

# Deleting this many events takes a few milliseconds.
STEP_EVENTS: Final = 2_000


class Purger:
    """Runs purge steps until no deleted events are left; ``kick`` after a deletion."""

    def __init__(self, committer: GroupCommitter, *, step_events: int = STEP_EVENTS) -> None:
        self._committer = committer
        self._step_events = step_events
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.events_purged = 0

    def kick(self) -> None:
        """Purge what deletions left, now in the background (at startup: what a crash left)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="purge")
        else:
            self._again = True  # a deletion committed after the running step looked

    async def _run(self) -> None:
        step = self._step_events
        while True:
            self._again = False
            try:
                removed = await self._committer.submit(lambda writer: writer.purge_deleted(step))
            except (StoreError, RuntimeError) as error:  # full disk, or shutting down
                log.warning("purging deleted sessions stopped (resumed later): %s", error)
                return
            self.events_purged += removed
            if removed < step and not self._again:
                return

    async def wait_idle(self) -> None:
        """Wait until nothing is left to purge (for tests and shutdown)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def close(self) -> None:
        """Stop purging; what is left is purged after the next start."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task})
