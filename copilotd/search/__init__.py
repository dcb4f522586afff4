"""Search across sessions: a full-text index (SQLite FTS5) that follows the log, or,
on the PostgreSQL store, the database's own full-text search (``postgres``, imported
only there).

A layer of its own between ``admin`` and ``sessions``: it reads the log only
through the store's contract and needs nothing of turns, so the session core
never waits on it nor knows it; the runtime feeds it committed events and the
API serves its searches.
"""

from copilotd.search.engine import SearchEngine
from copilotd.search.index import (
    INDEX_FILE_NAME,
    Hit,
    InvalidSearchQueryError,
    SearchFilter,
    drop_index,
)
from copilotd.search.indexer import Indexer

__all__ = [
    "INDEX_FILE_NAME",
    "Hit",
    "Indexer",
    "InvalidSearchQueryError",
    "SearchEngine",
    "SearchFilter",
    "drop_index",
]
