"""The full-text index of every session's messages: SQLite FTS5, beside the store.

FTS5 (in the standard library's ``sqlite3``) rather than an index of our own:
tokenising (Unicode, diacritics), phrase, prefix and NEAR queries, bm25
ranking and snippets are all done and maintained there, and its file is
crash-safe by SQLite's own journal. The index is derived data: it can always
be rebuilt from the log (``copilotd search-index rebuild``).

It follows the log through a durable cursor: per session, the last indexed
sequence lives in the same database as the indexed rows and moves in the same
SQLite transaction, so rows and cursor are lost or kept together. That is why
the database can run with ``synchronous=NORMAL`` (no fsync per commit): a
crash may lose the last few index transactions, never make the cursor claim
rows that are not there, and the indexer catches up from the cursor at start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from copilotd import events as ev
from copilotd.errors import InvalidArgumentError, Reason
from copilotd.events import SessionEvent, searchable_text

INDEX_FILE_NAME: Final = "search.sqlite3"
SNIPPET_TOKENS: Final = 12
# What FTS5 says about a query it cannot parse (any other error is ours, not the caller's).
_QUERY_ERRORS: Final = ("fts5:", "unterminated string", "no such column", "unknown special query")
# 2: entries.rewound (events cut by a rewind; added to a version 1 index at open).
_SCHEMA_VERSION: Final = 2

_SCHEMA: Final = """
CREATE VIRTUAL TABLE IF NOT EXISTS texts USING fts5(
    text, tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    event_time_ns INTEGER NOT NULL,
    rewound INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_by_session ON entries (session_id, sequence);
CREATE TABLE IF NOT EXISTS cursors (
    session_id TEXT PRIMARY KEY,
    indexed_sequence INTEGER NOT NULL
) WITHOUT ROWID;
"""


def drop_index(data_dir: Path) -> bool:
    """Delete the index of a data directory no daemon serves (whose lock the caller
    holds): the next start re-indexes every session from the log. False: there was none."""
    path = data_dir / INDEX_FILE_NAME
    existed = path.exists()
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    return existed


class InvalidSearchQueryError(InvalidArgumentError):
    def __init__(self, message: str) -> None:
        super().__init__(message, Reason.ERROR_REASON_INVALID_SEARCH_QUERY)


@dataclass(frozen=True, kw_only=True)
class SearchFilter:
    """What a search looks for, and where."""

    query: str
    session_id_prefix: str = ""
    since_ns: int | None = None
    until_ns: int | None = None
    # Also find events cut by rewinds (excluded by default, as from the conversation).
    include_rewound: bool = False

    def fingerprint(self) -> str:
        """Ties a page token to the search that issued it."""
        text = json.dumps(
            [self.query, self.session_id_prefix, self.since_ns, self.until_ns, self.include_rewound]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class Hit:
    session_id: str
    sequence: int
    event_type: str
    event_time_ns: int
    snippet: str
    rank: float
    rewound: bool = False


def page_token(search: SearchFilter, offset: int) -> str:
    text = json.dumps({"f": search.fingerprint(), "o": offset}).encode()
    return base64.urlsafe_b64encode(text).decode()


def token_offset(search: SearchFilter, token: str) -> int:
    """The offset a page token stands for; raises ``InvalidArgumentError`` for a foreign one."""
    if not token:
        return 0
    try:
        fields = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = fields["o"]
        matches = fields["f"] == search.fingerprint()
    except (ValueError, TypeError, KeyError, binascii.Error):
        matches, offset = False, None
    if not matches or not isinstance(offset, int) or offset < 0:
        raise InvalidArgumentError(
            "page_token is not one this daemon issued for this query and these filters; pass "
            "the next_page_token of the previous response with the same query and filters, or "
            "an empty token for the first page",
            Reason.ERROR_REASON_INVALID_PAGE_TOKEN,
        )
    return offset


def check_query(query: str) -> None:
    if not query.strip():
        raise InvalidSearchQueryError(
            "query is empty; give one or more words to look for (FTS5 syntax: words, "
            '"a phrase", OR, NOT, prefix*)'
        )


class SearchIndex:
    """The SQLite database: indexed rows and per-session cursors. Not thread-safe:
    the daemon uses it from its event loop only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm
        # files the database file's mode, so those are private too.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            self._db.close()
            raise RuntimeError(
                f"the search index {path} has schema version {version}, newer than this "
                f"copilotd's ({_SCHEMA_VERSION}); delete the file and it is rebuilt from the log"
            )
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(entries)")}
        if "rewound" not in columns:
            self._db.execute("ALTER TABLE entries ADD COLUMN rewound INTEGER NOT NULL DEFAULT 0")
        self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def cursors(self) -> dict[str, int]:
        """Every indexed session's last indexed sequence."""
        return dict(self._db.execute("SELECT session_id, indexed_sequence FROM cursors"))

    def cursor(self, session_id: str) -> int:
        row = self._db.execute(
            "SELECT indexed_sequence FROM cursors WHERE session_id = ?", (session_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def add(self, session_id: str, events: Sequence[SessionEvent], indexed_sequence: int) -> None:
        """Index ``events`` of a session and move its cursor to ``indexed_sequence``, in one
        transaction."""
        with self._transaction():
            for event in events:
                if event.type == ev.SESSION_SNAPSHOT_REWIND:
                    # Marked, not removed: include_rewound still finds them.
                    cut = event.session_snapshot_rewind
                    self._db.execute(
                        "UPDATE entries SET rewound = 1 "
                        "WHERE session_id = ? AND sequence BETWEEN ? AND ?",
                        (session_id, cut.first_rewound_sequence, cut.last_rewound_sequence),
                    )
                text = searchable_text(event)
                if not text:
                    continue
                entry = self._db.execute(
                    "INSERT INTO entries (session_id, sequence, event_type, event_time_ns) "
                    "VALUES (?, ?, ?, ?)",
                    (session_id, event.sequence, event.type, event.timestamp.ToNanoseconds()),
                ).lastrowid
                self._db.execute("INSERT INTO texts (rowid, text) VALUES (?, ?)", (entry, text))
            self._db.execute(
                "INSERT INTO cursors (session_id, indexed_sequence) VALUES (?, ?) "
                "ON CONFLICT (session_id) DO UPDATE "
                "SET indexed_sequence = excluded.indexed_sequence",
                (session_id, indexed_sequence),
            )

    def remove(self, session_ids: Iterable[str]) -> None:
        """Forget sessions: their rows and cursors, in one transaction."""
        with self._transaction():
            for session_id in session_ids:
                self._db.execute(
                    "DELETE FROM texts "
                    "WHERE rowid IN (SELECT id FROM entries WHERE session_id = ?)",
                    (session_id,),
                )
                self._db.execute("DELETE FROM entries WHERE session_id = ?", (session_id,))
                self._db.execute("DELETE FROM cursors WHERE session_id = ?", (session_id,))

    def clear(self) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM texts")
            self._db.execute("DELETE FROM entries")
            self._db.execute("DELETE FROM cursors")

    def size_bytes(self) -> int:
        page_count = self._db.execute("PRAGMA page_count").fetchone()[0]
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int(page_count) * int(page_size)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


def search_index(path: Path, search: SearchFilter, *, limit: int, offset: int) -> list[Hit]:
    """Up to ``limit`` hits after the first ``offset``, best (lowest bm25) first.

    Runs on a connection of its own, read-only, so that it can run in a thread
    while the indexer writes (WAL lets a reader see the last commit): a common
    word ranks every message that holds it, which takes seconds in a large
    store, and must not hold up the daemon's event loop meanwhile. Raises
    ``InvalidSearchQueryError`` for an empty query or one FTS5 cannot parse.
    """
    check_query(search.query)
    conditions = ["texts MATCH ?"]
    arguments: list[object] = [search.query]
    if not search.include_rewound:
        conditions.append("entries.rewound = 0")
    if search.session_id_prefix:
        # Not LIKE: it would read the _ an id may hold as a wildcard.
        conditions.append("substr(entries.session_id, 1, ?) = ?")
        arguments += [len(search.session_id_prefix), search.session_id_prefix]
    if search.since_ns is not None:
        conditions.append("entries.event_time_ns >= ?")
        arguments.append(search.since_ns)
    if search.until_ns is not None:
        conditions.append("entries.event_time_ns < ?")
        arguments.append(search.until_ns)
    sql = (
        "SELECT entries.session_id, entries.sequence, entries.event_type, "
        f"entries.event_time_ns, snippet(texts, 0, '[', ']', '…', {SNIPPET_TOKENS}), "
        "bm25(texts) AS score, entries.rewound FROM texts JOIN entries ON entries.id = texts.rowid "
        f"WHERE {' AND '.join(conditions)} "
        "ORDER BY score, entries.session_id, entries.sequence LIMIT ? OFFSET ?"
    )
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute(sql, [*arguments, limit, offset]).fetchall()
    except sqlite3.OperationalError as error:
        if not str(error).startswith(_QUERY_ERRORS):
            raise
        raise InvalidSearchQueryError(
            f"query {search.query!r} is not valid FTS5 syntax ({error}); put words with "
            'punctuation in double quotes ("config.toml"), and use OR, NOT, "a phrase" '
            "and prefix* as operators"
        ) from None
    finally:
        db.close()
    return [
        Hit(
            session_id=row[0],
            sequence=row[1],
            event_type=row[2],
            event_time_ns=row[3],
            snippet=row[4],
            rank=row[5],
            rewound=bool(row[6]),
        )
        for row in rows
    ]


class _Transaction:
    """BEGIN … COMMIT, or ROLLBACK when the body raises (the connection is in autocommit
    mode, so that PRAGMAs and our transactions are explicit)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
