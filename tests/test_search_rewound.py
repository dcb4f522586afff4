"""The search index marks events a rewind cut: excluded by default, found on request,
and an index written before the mark existed gains it when opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from copilotd import events as ev
from copilotd.search.index import INDEX_FILE_NAME, SearchFilter, SearchIndex, search_index
from copilotd.store import SessionEvent


def numbered(*events: SessionEvent) -> list[SessionEvent]:
    for sequence, event in enumerate(events, start=1):
        event.sequence = sequence
    return list(events)


def found(path: Path, query: str, *, include_rewound: bool = False) -> list[tuple[int, bool]]:
    search = SearchFilter(query=query, include_rewound=include_rewound)
    return [(hit.sequence, hit.rewound) for hit in search_index(path, search, limit=10, offset=0)]


def test_rewound_events_are_marked_not_removed(tmp_path: Path) -> None:
    path = tmp_path / INDEX_FILE_NAME
    index = SearchIndex(path)
    events = numbered(
        ev.make_event(ev.USER_MESSAGE, content="kept apples"),
        ev.make_event(ev.USER_MESSAGE, content="cut apples"),
        ev.make_event(ev.USER_MESSAGE, content="cut pears"),
    )
    index.add("s", events, 3)
    rewind = ev.make_event(
        ev.SESSION_SNAPSHOT_REWIND,
        to_sequence=1,
        first_rewound_sequence=2,
        last_rewound_sequence=3,
    )
    rewind.sequence = 4
    later = ev.make_event(ev.USER_MESSAGE, content="later apples")
    later.sequence = 5
    index.add("s", [rewind, later], 5)
    index.close()

    assert sorted(found(path, "apples")) == [(1, False), (5, False)]
    assert sorted(found(path, "apples", include_rewound=True)) == [
        (1, False),
        (2, True),
        (5, False),
    ]
    assert found(path, "pears") == []
    search = SearchFilter(query="apples")
    assert search.fingerprint() != SearchFilter(query="apples", include_rewound=True).fingerprint()


def test_an_index_of_version_1_gains_the_mark(tmp_path: Path) -> None:
    path = tmp_path / INDEX_FILE_NAME
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE VIRTUAL TABLE texts USING fts5(text);
        CREATE TABLE entries (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL,
            sequence INTEGER NOT NULL, event_type TEXT NOT NULL, event_time_ns INTEGER NOT NULL);
        CREATE TABLE cursors (session_id TEXT PRIMARY KEY, indexed_sequence INTEGER NOT NULL);
        INSERT INTO entries VALUES (1, 'old', 1, 'user.message', 0);
        INSERT INTO texts (rowid, text) VALUES (1, 'ancient words');
        INSERT INTO cursors VALUES ('old', 1);
        PRAGMA user_version = 1;
        """
    )
    old.close()
    index = SearchIndex(path)
    assert index.cursors() == {"old": 1}
    index.close()
    assert found(path, "ancient") == [(1, False)]
