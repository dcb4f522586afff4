"""Reclaiming deleted sessions' events in the background, a bounded step at a time.

``DeleteSession`` removes a session in one small transaction; its events,
already unreachable, are then removed here, ``STEP_EVENTS`` per operation,
as background operations of the group committer: each in a transaction of
its own, taken when no other write waits (or now and then under constant
load), and with a rest as long as the step after each. A session with a
million events never holds the writer for more than one step, and other
sessions' writes wait behind at most one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from copilotd.store import StoreError
from copilotd.store.committer import GroupCommitter

log = logging.getLogger(__name__)

# A step holds the writer for as long as it takes to delete this many events:
# about a millisecond when their pages are in memory, under ten when each of
# their ~35 pages must be read from disk first.
STEP_EVENTS: Final = 200


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
        started, purged, steps = time.monotonic(), 0, 0
        while True:
            self._again = False
            step_started = time.monotonic()
            try:
                removed = await self._committer.submit(
                    lambda writer: writer.purge_deleted(step), background=True
                )
            except (StoreError, RuntimeError) as error:  # full disk, or shutting down
                log.warning("purging deleted sessions stopped (resumed later): %s", error)
                return
            except Exception:
                log.exception("purging deleted sessions failed (retried after a restart)")
                return
            self.events_purged += removed
            purged, steps = purged + removed, steps + 1
            if removed < step and not self._again:
                break
            # Rest as long as the step took: purging gets at most half of the
            # writer (and of the interpreter), however long the history was.
            await asyncio.sleep(time.monotonic() - step_started)
        if purged:
            log.info(
                "purged %d events of deleted sessions in %.3f s (%d steps)",
                purged,
                time.monotonic() - started,
                steps,
            )

    async def wait_idle(self) -> None:
        """Wait until nothing is left to purge (for tests and shutdown)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def close(self) -> None:
        """Stop purging; what is left is purged after the next start."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task})
