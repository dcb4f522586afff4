"""What the daemon needs of a search engine: the SQLite indexer or the PostgreSQL store's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from copilotd.events import SessionEvent
from copilotd.search.index import Hit, SearchFilter
from copilotd.store import StoreChange


class SearchEngine(Protocol):
    """Fed by the daemon (published batches, forgotten sessions, other daemons'
    commits) and asked for pages of hits. An engine whose index the store writes
    itself ignores the feeding."""

    def observe(self, session_id: str, events: Sequence[SessionEvent]) -> None: ...

    def reindex(self, session_id: str) -> None: ...

    def changed(self, change: StoreChange | None) -> None: ...

    def start(self) -> None: ...

    async def close(self) -> None: ...

    async def search(
        self, search: SearchFilter, requested_page_size: int, token: str
    ) -> tuple[list[Hit], str]: ...
