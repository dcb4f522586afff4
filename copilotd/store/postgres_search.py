"""Full-text search on the PostgreSQL backend: its tables, kept in the writing transaction.

PostgreSQL's own full-text search (``tsvector``, a GIN index, ``ts_rank_cd``,
``ts_headline``) instead of a SQLite file per daemon: an event's entry is
written by the transaction that appends the event, so every daemon sharing
the database finds a committed event at once, and a crash can never leave
one unindexed (there is no cursor to catch up). Tables:

* ``search_entries``: ``(log_number, sequence)`` -> the searchable text of
  one event of a log (user message, assistant answer, tool result), its type
  and time, and ``tsv``, generated from the text (``SEARCH_VECTOR``) and
  indexed by GIN. Keyed by log like ``events``, so a log's entries go with
  its events in the purge, and are shared by the forks that read it.
* ``search_spans``: which sessions see which part of which log
  (``lineage.spans``): a session reads its own log and, if it is a fork, its
  ancestors' logs up to the fork points. A search joins entries to spans, so
  an inherited event is found under the parent and each fork, and a fork
  costs one row per inherited log, whatever the history's length.
* ``search_cuts``: per session, the ranges its rewinds cut (its record's
  ``rewound``). Per session, not per log entry: a parent's rewind after a
  fork point does not cut what its forks inherited.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from copilotd import events as ev
from copilotd.events import searchable_text
from copilotd.store import lineage
from copilotd.store.base import SessionEvent, SessionRecord
from copilotd.store.postgres_schema import SCHEMA

if TYPE_CHECKING:  # the store's module imports psycopg already; this one only names it
    import psycopg

# The text search configuration: 'simple' lowercases and stems nothing, so
# words match as written (case aside) in any language, as FTS5's unicode61.
TEXT_CONFIG: Final = "simple"
# ASCII punctuation becomes spaces before PostgreSQL's parser sees the text:
# it would keep "config.toml" or "a/b/c" as one token, where FTS5's unicode61
# (the SQLite index) finds "config" in it. Queries are normalised the same way.
PUNCTUATION: Final = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
# bigint's range: a session's own log has no end (MAX_U64), the column is signed.
_OPEN_END: Final = 2**63 - 1
# The characters of a message that are searchable: a tsvector holds at most
# 1 MB, and a message of short distinct words past that would fail the
# append itself. 100,000 characters stay under it whatever they are.
SEARCHABLE_CHARS: Final = 100_000
# Events decoded per batch when an older store's log is indexed at upgrade.
BACKFILL_BATCH: Final = 1_000


_SPACES: Final = str.maketrans(PUNCTUATION, " " * len(PUNCTUATION))
# $p$ quoting: the punctuation holds both quote characters.
SEARCH_VECTOR: Final = (
    f"to_tsvector('{TEXT_CONFIG}'::regconfig,"
    f" translate(text, $p${PUNCTUATION}$p$, $p${' ' * len(PUNCTUATION)}$p$))"
)

# What version 6 added; also run on an older store when it opens (then the
# backfill indexes the events already there).
CREATE_SEARCH: Final = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.search_entries (
    log_number bigint NOT NULL,
    sequence bigint NOT NULL,
    event_type text NOT NULL,
    event_time_ns bigint NOT NULL,
    text text NOT NULL,
    tsv tsvector GENERATED ALWAYS AS ({SEARCH_VECTOR}) STORED,
    PRIMARY KEY (log_number, sequence)
);
CREATE INDEX IF NOT EXISTS search_entries_tsv ON {SCHEMA}.search_entries USING gin (tsv);
CREATE INDEX IF NOT EXISTS search_entries_time ON {SCHEMA}.search_entries (event_time_ns);
CREATE TABLE IF NOT EXISTS {SCHEMA}.search_spans (
    session_id text COLLATE "C" NOT NULL,
    log_number bigint NOT NULL,
    first_sequence bigint NOT NULL,
    last_sequence bigint NOT NULL,
    PRIMARY KEY (session_id, log_number)
);
CREATE INDEX IF NOT EXISTS search_spans_log ON {SCHEMA}.search_spans (log_number);
CREATE TABLE IF NOT EXISTS {SCHEMA}.search_cuts (
    session_id text COLLATE "C" NOT NULL,
    first_sequence bigint NOT NULL,
    last_sequence bigint NOT NULL,
    PRIMARY KEY (session_id, first_sequence)
);
"""


def normalise(text: str) -> str:
    """``text`` with ASCII punctuation as spaces, as the entries' vectors see it."""
    return text.translate(_SPACES)


def index_events(
    connection: psycopg.Connection[Any], log_number: int, events: Iterable[SessionEvent]
) -> None:
    """Write the entries of events appended to a log (in the appending transaction)."""
    rows = []
    for event in events:
        text = searchable_text(event)
        if text:
            time_ns = event.timestamp.ToNanoseconds()
            # PostgreSQL's text cannot hold NUL; the stored event keeps it.
            searchable = text[:SEARCHABLE_CHARS].replace("\0", "")
            rows.append((log_number, event.sequence, event.type, time_ns, searchable))
    if rows:
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {SCHEMA}.search_entries"
                " (log_number, sequence, event_type, event_time_ns, text)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                rows,
            )


def show_session(connection: psycopg.Connection[Any], record: SessionRecord) -> None:
    """Make a new session's history searchable under its id: its spans and cuts."""
    session_id = record.metadata.session_id
    spans = [
        (session_id, log_number, first, min(last, _OPEN_END))
        for log_number, first, last in lineage.spans(record)
    ]
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {SCHEMA}.search_spans VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (session_id, log_number) DO UPDATE"
            " SET first_sequence = excluded.first_sequence,"
            " last_sequence = excluded.last_sequence",
            spans,
        )
    save_cuts(connection, record)


def save_cuts(connection: psycopg.Connection[Any], record: SessionRecord) -> None:
    """Replace the session's cut ranges with its record's (after a rewind)."""
    session_id = record.metadata.session_id
    connection.execute(f"DELETE FROM {SCHEMA}.search_cuts WHERE session_id = %s", (session_id,))
    if record.rewound:
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {SCHEMA}.search_cuts VALUES (%s, %s, %s)",
                [(session_id, cut.first, cut.last) for cut in record.rewound],
            )


def hide_session(connection: psycopg.Connection[Any], session_id: str) -> None:
    """A deleted session is no longer found (its log's entries go with the purge)."""
    connection.execute(f"DELETE FROM {SCHEMA}.search_spans WHERE session_id = %s", (session_id,))
    connection.execute(f"DELETE FROM {SCHEMA}.search_cuts WHERE session_id = %s", (session_id,))


def cuts(events: Sequence[SessionEvent]) -> bool:
    """Whether ``events`` hold a rewind (the session's cuts change)."""
    return any(event.type == ev.SESSION_SNAPSHOT_REWIND for event in events)


# One purge step's entries: those of the events the step removed and before.
PURGE_ENTRIES: Final = (
    f"DELETE FROM {SCHEMA}.search_entries WHERE log_number = %s AND sequence IN"
    f" (SELECT sequence FROM {SCHEMA}.search_entries WHERE log_number = %s"
    " ORDER BY sequence LIMIT %s)"
)


def rebuild(connection: psycopg.Connection[Any]) -> int:
    """Index every log and session afresh from the events and records; the number of
    events read. Run in the caller's transaction (an upgrade, or ``search-index rebuild``).

    Bounded in memory: events are read ``BACKFILL_BATCH`` at a time, in key order.
    """
    connection.execute(
        f"TRUNCATE {SCHEMA}.search_entries, {SCHEMA}.search_spans, {SCHEMA}.search_cuts"
    )
    read = 0
    position = (-1, 0)
    while True:
        rows = connection.execute(
            f"SELECT log_number, sequence, event FROM {SCHEMA}.events"
            " WHERE (log_number, sequence) > (%s, %s)"
            " ORDER BY log_number, sequence LIMIT %s",
            (*position, BACKFILL_BATCH),
        ).fetchall()
        if not rows:
            break
        read += len(rows)
        position = (rows[-1][0], rows[-1][1])
        for log_number, batch in _by_log(rows):
            index_events(connection, log_number, batch)
    session = ""
    while True:
        found = connection.execute(
            f"SELECT session_id, record FROM {SCHEMA}.sessions WHERE session_id > %s"
            " ORDER BY session_id LIMIT %s",
            (session, BACKFILL_BATCH),
        ).fetchall()
        if not found:
            break
        session = found[-1][0]
        for _, raw in found:
            show_session(connection, SessionRecord.FromString(raw))
    return read


class _LogBatch(NamedTuple):
    log_number: int
    events: list[SessionEvent]


def _by_log(rows: list[tuple[Any, ...]]) -> list[_LogBatch]:
    batches: list[_LogBatch] = []
    for log_number, _, raw in rows:
        if not batches or batches[-1].log_number != log_number:
            batches.append(_LogBatch(log_number, []))
        batches[-1].events.append(SessionEvent.FromString(raw))
    return batches


class Found(NamedTuple):
    """One search hit as the database returns it."""

    session_id: str
    sequence: int
    event_type: str
    event_time_ns: int
    snippet: str
    rank: float
    rewound: bool
    text: str


def _cut_in(session: str) -> str:
    return (
        f"EXISTS (SELECT 1 FROM {SCHEMA}.search_cuts c WHERE c.session_id = {session}"
        " AND e.sequence BETWEEN c.first_sequence AND c.last_sequence)"
    )


def search(
    connection: psycopg.Connection[Any],
    tsquery: str,
    *,
    session_id_prefix: str,
    since_ns: int | None,
    until_ns: int | None,
    include_rewound: bool,
    limit: int,
    offset: int,
    snippet_words: int,
) -> list[Found]:
    """Up to ``limit`` hits after the first ``offset``, best (highest ``ts_rank_cd``) first.

    ``tsquery`` is ``to_tsquery`` input in which every lexeme is quoted (the
    caller built it from the user's query); the GIN index finds the entries,
    the spans name the sessions that see them, and only the page's rows get
    a ``ts_headline`` (it re-parses the text: the costly part of a hit).
    """
    conditions = ["e.tsv @@ q.q"]
    arguments: list[object] = [tsquery]
    if not include_rewound:
        conditions.append(f"NOT {_cut_in('s.session_id')}")
    if session_id_prefix:
        # LIKE on a "C" column is a range scan of the spans' key; its wildcards escaped.
        escaped = session_id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append("s.session_id LIKE %s")
        arguments.append(escaped + "%")
    if since_ns is not None:
        conditions.append("e.event_time_ns >= %s")
        arguments.append(since_ns)
    if until_ns is not None:
        conditions.append("e.event_time_ns < %s")
        arguments.append(until_ns)
    options = (
        f"StartSel=[, StopSel=], MaxWords={snippet_words}, MinWords={max(snippet_words // 3, 1)},"
        " MaxFragments=1, FragmentDelimiter=…"
    )
    sql = (
        "SELECT page.session_id, page.sequence, page.event_type, page.event_time_ns,"
        f" ts_headline('{TEXT_CONFIG}', page.text, page.q, %s), page.rank, page.rewound,"
        " page.text"
        " FROM (SELECT s.session_id, e.sequence, e.event_type, e.event_time_ns, e.text, q.q,"
        f" ts_rank_cd(e.tsv, q.q) AS rank, {_cut_in('s.session_id')} AS rewound"
        f" FROM (SELECT to_tsquery('{TEXT_CONFIG}', %s) AS q) q"
        f" JOIN {SCHEMA}.search_entries e ON true"
        f" JOIN {SCHEMA}.search_spans s ON s.log_number = e.log_number"
        " AND e.sequence BETWEEN s.first_sequence AND s.last_sequence"
        f" WHERE {' AND '.join(conditions)}"
        " ORDER BY rank DESC, s.session_id, e.sequence LIMIT %s OFFSET %s) page"
        " ORDER BY page.rank DESC, page.session_id, page.sequence"
    )
    rows = connection.execute(sql, [options, *arguments, limit, offset]).fetchall()
    return [Found(*row) for row in rows]
