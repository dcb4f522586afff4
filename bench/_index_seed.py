"""Writing a seeded store's search index directly, as the daemon's indexer would have.

Indexing ten million events through the daemon's catch-up reads every event
back from the store and takes one SQLite transaction per 500 of them; here
the rows come straight from the seeding layout (the same texts, sequences,
types and times ``bench/_seed.py`` gave the store) into the index's own
schema, created by ``SearchIndex`` itself, in large transactions. The
cursors end at each session's last sequence, so a daemon started on the
store and this index finds nothing to catch up.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from bench._seed import Layout, session_template
from copilotd.events import searchable_text
from copilotd.search import INDEX_FILE_NAME
from copilotd.search.index import SearchIndex

# Index rows written per SQLite transaction.
ROWS_PER_TRANSACTION = 100_000


def _indexed_positions(count: int) -> list[tuple[int, str, str]]:
    """(position, type, text) of the events of a ``count``-event session that search finds."""
    return [
        (position, event.type, text)
        for position, event in enumerate(session_template(count))
        if (text := searchable_text(event))
    ]


def seed_index(data_dir: Path, layout: Layout, *, texts: bool = True) -> dict[str, float]:
    """Write the index of a store seeded with ``layout`` into ``data_dir``.

    ``texts=False`` writes only the cursors (each session indexed up to its
    last event): for a daemon whose figures are not about search, so that it
    does not spend the benchmark indexing a history nobody searches.
    Returns the rows written and the seconds it took.
    """
    began = time.perf_counter()
    path = data_dir / INDEX_FILE_NAME
    SearchIndex(path).close()  # its own schema, version and file mode
    db = sqlite3.connect(path, isolation_level=None)
    rows = 0
    try:
        db.execute("PRAGMA synchronous = OFF")  # seeding: a crash means seeding again
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO cursors (session_id, indexed_sequence) VALUES (?, ?)",
            ((session_id, count) for session_id, count in layout.sessions()),
        )
        if texts:
            for entries in _batches(layout):
                db.executemany(
                    "INSERT INTO entries (id, session_id, sequence, event_type, event_time_ns)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (entry[:5] for entry in entries),
                )
                db.executemany(
                    "INSERT INTO texts (rowid, text) VALUES (?, ?)",
                    ((entry[0], entry[5]) for entry in entries),
                )
                rows += len(entries)
                db.execute("COMMIT")
                db.execute("BEGIN")
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return {"rows": rows, "seconds": time.perf_counter() - began}


def _batches(layout: Layout) -> Iterator[list[tuple[int, str, int, str, int, str]]]:
    """(id, session, sequence, type, time, text) rows in batches of ``ROWS_PER_TRANSACTION``."""
    positions: dict[int, list[tuple[int, str, str]]] = {}
    batch: list[tuple[int, str, int, str, int, str]] = []
    next_id = 1
    for number, (session_id, count) in enumerate(layout.sessions()):
        indexed = positions.get(count)
        if indexed is None:
            indexed = positions[count] = _indexed_positions(count)
        for position, kind, text in indexed:
            batch.append(
                (next_id, session_id, position + 1, kind, layout.time_ns(number, position), text)
            )
            next_id += 1
        if len(batch) >= ROWS_PER_TRANSACTION:
            yield batch
            batch = []
    if batch:
        yield batch
