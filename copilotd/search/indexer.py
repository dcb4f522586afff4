"""The indexer: keeps the search index following the log, and answers searches.

The daemon shows it every committed batch (``observe``, from the fan-out
publish that follows each commit), every session deleted or imported
(``reindex``), and what other daemons sharing the store committed
(``changed``, from the store's notifications). One task does the indexing, off the
commit's path: a turn pays for remembering the batch, not for SQLite.

At start, and whenever the events it was shown do not follow on from a
session's cursor, it reads the missing events from the store: so a crash
between a commit and its indexing (or of the index's own last transactions)
leaves nothing unindexed once the daemon runs again. A search first waits for
the indexing of everything committed before it arrived, so it sees its
caller's own writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from copilotd.events import SessionEvent
from copilotd.limits import MAX_PAGE_SIZE
from copilotd.search.index import (
    INDEX_FILE_NAME,
    Hit,
    SearchFilter,
    SearchIndex,
    check_query,
    page_token,
    search_index,
    token_offset,
)
from copilotd.sessions.validation import page_size
from copilotd.store import SessionNotFound, Store, StoreChange

log = logging.getLogger(__name__)

DEFAULT_SEARCH_PAGE_SIZE: Final = 20
# Events read from the store per index transaction while catching up.
_CATCH_UP_BATCH: Final = 500
# Events of one session held for indexing at most; beyond, they are read back.
_MAX_SHOWN: Final = 1_000


class Indexer:
    """Follows the log into a ``SearchIndex`` in ``data_dir``."""

    def __init__(self, store: Store, data_dir: Path) -> None:
        self._store = store
        self.index = SearchIndex(data_dir / INDEX_FILE_NAME)
        # Per session, the committed events shown and not yet indexed (an empty
        # list: read from the store instead).
        self._shown: dict[str, list[SessionEvent]] = {}
        self._forgotten: set[str] = set()
        # Sessions other daemons wrote to, and whether to walk every session.
        self._behind: set[str] = set()
        self._walk_all = False
        self._catching_up = True
        self._queued = self._done = 0
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- fed by the daemon ------------------------------------------------------------

    def observe(self, session_id: str, events: Sequence[SessionEvent]) -> None:
        """Remember a published batch; only its persisted events are indexed."""
        persisted = [event for event in events if not event.ephemeral]
        if not persisted:
            return
        shown = self._shown.setdefault(session_id, [])
        shown.extend(persisted)
        if len(shown) > _MAX_SHOWN:
            # Behind (a long catch-up): keep the last only, the rest is read from the store.
            del shown[:-1]
        self._queue()

    def reindex(self, session_id: str) -> None:
        """Index the session afresh from the store: it was deleted (then it is only
        removed), imported, or replaced by an import."""
        self._shown.pop(session_id, None)
        self._forgotten.add(session_id)
        self._queue()

    def changed(self, change: StoreChange | None) -> None:
        """What another daemon sharing the store committed (``None``: some changes may
        have been missed): the events are read from the store."""
        if change is None:
            self._walk_all = True
        elif change.kind == "deleted":
            self.reindex(change.session_id)
            return
        elif change.kind in ("events", "created"):
            self._behind.add(change.session_id)
        else:
            return
        self._queue()

    def _queue(self) -> None:
        self._queued += 1
        self._wake.set()

    # -- running ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="search indexer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.index.close()

    async def _run(self) -> None:
        try:
            await self.catch_up()
        except Exception:
            log.exception("search index: catching up with the log failed; searches may miss")
        self._catching_up = False
        await self._mark_done(self._queued)
        while True:
            await self._wake.wait()
            self._wake.clear()
            reached = self._queued
            try:
                await self._index_pending()
            except (OSError, sqlite3.OperationalError) as error:
                # A full disk, say. The cursors did not move, so the next round
                # walks every session from its cursor and reads what was missed
                # from the store: nothing is lost, only found later.
                self._walk_all = True
                log.warning(
                    "search index: indexing failed (%s); it catches up from the log "
                    "at the next commit or start",
                    error,
                )
            except Exception:
                self._walk_all = True
                log.exception("search index: indexing failed; it catches up from the log")
            await self._mark_done(reached)

    async def _mark_done(self, reached: int) -> None:
        async with self._changed:
            self._done = max(self._done, reached)
            self._changed.notify_all()

    async def settled(self) -> None:
        """Wait until everything shown before this call is indexed (and the start-up
        catch-up is over)."""
        target = self._queued
        async with self._changed:
            await self._changed.wait_for(lambda: not self._catching_up and self._done >= target)

    async def catch_up(self) -> None:
        """Index what the log holds beyond each session's cursor; drop sessions gone."""
        cursors = self.index.cursors()
        token = ""
        caught_up = 0
        while True:
            records, token = self._store.list_sessions(limit=MAX_PAGE_SIZE, page_token=token)
            for record in records:
                session_id = record.metadata.session_id
                last = record.metadata.last_sequence
                cursor = cursors.pop(session_id, 0)
                if cursor > last:  # another history under the same id: index it afresh
                    self.index.remove([session_id])
                    cursor = 0
                if cursor < last:
                    caught_up += 1
                    await self._catch_up(session_id, last)
            if not token:
                break
        if cursors:
            self.index.remove(cursors)
        if caught_up or cursors:
            log.info(
                "search index: caught up %d session(s), removed %d deleted",
                caught_up,
                len(cursors),
            )

    async def _catch_up(self, session_id: str, last_sequence: int) -> None:
        cursor = self.index.cursor(session_id)
        while cursor < last_sequence:
            try:
                events = self._store.read_events(
                    session_id, after=cursor, before=last_sequence + 1, limit=_CATCH_UP_BATCH
                )
            except SessionNotFound:
                self.index.remove([session_id])
                return
            if not events:
                break
            cursor = events[-1].sequence
            self.index.add(session_id, events, cursor)
            await asyncio.sleep(0)  # a long history must not hold up the API

    async def _index_pending(self) -> None:
        if self._walk_all:
            self._walk_all = False
            await self.catch_up()
        behind, self._behind = self._behind, set()
        for session_id in behind:
            record = self._store.get_session(session_id)
            if record is not None:
                await self._catch_up(session_id, record.metadata.last_sequence)
        forgotten, self._forgotten = self._forgotten, set()
        if forgotten:
            self.index.remove(forgotten)
            for session_id in forgotten:
                record = self._store.get_session(session_id)
                if record is not None:  # imported: index its history
                    await self._catch_up(session_id, record.metadata.last_sequence)
        shown, self._shown = self._shown, {}
        for session_id, events in shown.items():
            if events[0].sequence == self.index.cursor(session_id) + 1:
                self.index.add(session_id, events, events[-1].sequence)
            else:  # a gap, or some already indexed (by the start-up catch-up)
                await self._catch_up(session_id, events[-1].sequence)
            await asyncio.sleep(0)

    # -- searching --------------------------------------------------------------------

    async def search(
        self, search: SearchFilter, requested_page_size: int, token: str
    ) -> tuple[list[Hit], str]:
        """A page of hits and the next page's token ("" after the last page)."""
        check_query(search.query)
        offset = token_offset(search, token)
        limit = page_size(requested_page_size, DEFAULT_SEARCH_PAGE_SIZE)
        await self.settled()
        # One more than asked for tells whether another page follows.
        hits = await asyncio.to_thread(
            search_index, self.index.path, search, limit=limit + 1, offset=offset
        )
        more = len(hits) > limit
        return hits[:limit], page_token(search, offset + limit) if more else ""
